"""The metering boundary: which data codes are inputs, outputs or sub-meters, and the checks
that keep 综合能源消费总量 from being summed wrong (a variety that converts to nothing, a code
counted twice, a boundary without an input)."""

from __future__ import annotations

from collections.abc import Callable

from agent.config.codes import Role, default_role, split_code, varieties
from agent.config.schema import DATA_CODE, BoundarySection, Config

ENERGY_CLASSES = frozenset({"01", "02", "03"})  # energy and energy-consuming working media
PRODUCT_CLASS = "04"
INDICATOR_CLASS = "08"


def role_of(code: str, boundary: BoundarySection) -> Role:
    """The code's boundary role: listed in `[boundary]`, else from its usage field. Only energy
    classes (01–03) cross the boundary; products and indicators are "none"."""
    if code in boundary.inputs:
        return "input"
    if code in boundary.outputs:
        return "output"
    if code in boundary.sub_meters:
        return "sub"
    if split_code(code).class_ not in ENERGY_CLASSES:
        return "none"
    return default_role(code)


def unit_consumption_code(product_code: str, boundary: BoundarySection) -> str:
    """The code the unit consumption of a product is uploaded under."""
    if product_code in boundary.products:
        return boundary.products[product_code]
    f = split_code(product_code)
    return f"{f.process}-{f.unit}-{f.equipment}-{INDICATOR_CLASS}{f.variety}-{f.usage}"


def check_boundary(cfg: Config, err: Callable[[str, str], None],
                   convertible: Callable[[str], bool]) -> None:
    """Every problem as err(key path, message). `convertible(variety)`: it has a coefficient."""
    b = cfg.boundary
    listed: dict[str, str] = {}
    for name in ("inputs", "outputs", "sub_meters"):
        for i, code in enumerate(getattr(b, name)):
            key = f"boundary.{name}[{i}]"
            if not DATA_CODE.match(code):
                err(key, f"expected a data code PP-UU-EEEE-CCTTTT-DD, got {code!r}")
                continue
            if code in listed:
                err(key, f"{code} is also in boundary.{listed[code]}: a code has one role")
            listed.setdefault(code, name)
    for key, code in [("boundary.total_code", b.total_code),
                      *((f"boundary.products.{k}", v) for k, v in b.products.items())]:
        if not DATA_CODE.match(code):
            err(key, f"expected a data code PP-UU-EEEE-CCTTTT-DD, got {code!r}")
    for k in b.products:
        if not DATA_CODE.match(k) or split_code(k).class_ != PRODUCT_CLASS:
            err(f"boundary.products.{k}", "expected a product output code (data class 04)")
    products = {p.code for m in cfg.meter for p in m.points
                if p.code and DATA_CODE.match(p.code) and split_code(p.code).class_ == PRODUCT_CLASS}
    for code in sorted(products | set(b.products)):
        if DATA_CODE.match(code) and unit_consumption_code(code, b) == b.total_code:
            err(f"boundary.products.{code}", f"its unit consumption would use {b.total_code}, "
                "the total's code: give it another code here")

    known = varieties()
    counted: dict[str, str] = {}
    inputs = [c for c in b.inputs if DATA_CODE.match(c)]
    for i, m in enumerate(cfg.meter):
        for p in m.points:
            if p.code is None or not DATA_CODE.match(p.code):
                continue
            where = f"meter[{i}] ({m.name}).{p.name}"
            f = split_code(p.code)
            v = known.get(f.variety)
            if f.class_ in ENERGY_CLASSES and v is not None:
                if v.class_ != f.class_:
                    err(f"{where}.code", f"{p.code}: variety {f.variety} ({v.name} {v.name_en}) is "
                        f"data class {v.class_}, the code says class {f.class_}")
                if p.variety is not None and p.variety != v.key:
                    err(f"{where}.variety", f"{p.variety!r} contradicts the code {p.code}: "
                        f"variety field {f.variety} is {v.name} ({v.key!r})")
            variety = p.variety or (v.key if v is not None else None)
            if f.class_ in ENERGY_CLASSES and p.kind == "counter":
                if variety is None:
                    err(f"{where}.variety", f"required: the code's variety field {f.variety} is not "
                        "in config/codes/varieties.toml")
                elif not convertible(variety) and p.code not in cfg.coefficient:
                    err(f"{where}.variety", f"{variety!r} has no standard-coal coefficient (a "
                        "misspelling would count 0 tce): use a known variety or set "
                        f"coefficients.{variety} or [coefficient.\"{p.code}\"]")
                role = role_of(p.code, b)
                if role in ("input", "output"):
                    if p.code in counted:
                        err(f"{where}.code", f"{p.code} ({role}) is also {counted[p.code]}: it "
                            "would be summed twice — give each point its own code, or make one "
                            "a sub-meter")
                    counted.setdefault(p.code, where)
                    if role == "input":
                        inputs.append(p.code)
    energy_points = [p for m in cfg.meter for p in m.points
                     if p.code and DATA_CODE.match(p.code) and p.kind == "counter"
                     and split_code(p.code).class_ in ENERGY_CLASSES]
    if energy_points and not inputs:
        err("boundary.inputs", "the boundary has no input: no metered point has a purchased "
            "usage code (…-10) and boundary.inputs lists no code (add the codes of the energy "
            "bought in, metered or entered by hand)")
    for code, c in cfg.coefficient.items():
        key = f"coefficient.\"{code}\""
        if not DATA_CODE.match(code):
            err(key, f"expected a data code PP-UU-EEEE-CCTTTT-DD, got {code!r}")
        given = [n for n in ("kgce", "enthalpy_mj_per_kg", "pressure_mpa", "calorific_mj_per_m3")
                 if getattr(c, n) is not None]
        if c.pressure_mpa is not None and not 0.1 <= c.pressure_mpa <= 4.0:
            err(f"{key}.pressure_mpa", "the saturated-steam table covers 0.1–4.0 MPa absolute: "
                "give enthalpy_mj_per_kg for other steam")
        if len(given) != 1:
            err(key, "give exactly one of kgce, enthalpy_mj_per_kg, pressure_mpa, "
                f"calorific_mj_per_m3 (got {', '.join(given) or 'none'})")
