"""OpenSlide-style properties of a TIFF slide, so `read_mpp` finds the mpp the same way for both readers."""

from __future__ import annotations

from collections.abc import Sequence


def openslide_downsamples(dims: tuple[tuple[int, int], ...]) -> tuple[float, ...]:
    """OpenSlide's rule: mean of the width and height ratios to level 0."""
    w0, h0 = dims[0]
    return tuple(1.0 if i == 0 else (h0 / h + w0 / w) / 2 for i, (w, h) in enumerate(dims))

def tiff_properties(page, vendor: str, levels: Sequence) -> dict[str, str]:
    """A subset of OpenSlide's property names, so `read_mpp` finds the mpp the same way for both readers."""
    props: dict[str, str] = {"openslide.vendor": vendor, "openslide.level-count": str(len(levels))}
    tags = page.tags
    description = str(page.description or "")
    if description:
        props["tiff.ImageDescription"] = description
        props["openslide.comment"] = description
    for name in ("Software", "Make", "Model", "DateTime", "Artist", "HostComputer", "Copyright"):
        if name in tags:
            props[f"tiff.{name}"] = str(tags[name].value)
    props |= resolution_properties(tags)
    unit_name = props["tiff.ResolutionUnit"]
    xres, yres = _rational(tags, "XResolution"), _rational(tags, "YResolution")
    if vendor == "aperio":
        for field in description.split("|")[1:]:
            key, sep, value = field.partition("=")
            if sep:
                props[f"aperio.{key.strip()}"] = value.strip()
        if "aperio.MPP" in props:
            props["openslide.mpp-x"] = props["openslide.mpp-y"] = _fmt(float(props["aperio.MPP"]))
        if "aperio.AppMag" in props:
            props["openslide.objective-power"] = props["aperio.AppMag"]
    elif unit_name in ("centimeter", "inch") and xres and yres:  # as OpenSlide 4 does
        per_unit_um = 1e4 if unit_name == "centimeter" else 25400.0
        props["openslide.mpp-x"] = _fmt(per_unit_um / xres)
        props["openslide.mpp-y"] = _fmt(per_unit_um / yres)
    for i, (lv, ds) in enumerate(zip(levels, openslide_downsamples(tuple((lv.width, lv.height) for lv in levels)), strict=True)):
        props[f"openslide.level[{i}].downsample"] = str(int(ds)) if ds == int(ds) else repr(ds)
        props[f"openslide.level[{i}].width"] = str(lv.width)
        props[f"openslide.level[{i}].height"] = str(lv.height)
        props[f"openslide.level[{i}].tile-width"] = str(lv.tile_w)
        props[f"openslide.level[{i}].tile-height"] = str(lv.tile_h)
    return props


def resolution_properties(tags) -> dict[str, str]:
    """`tiff.ResolutionUnit` / `tiff.XResolution` / `tiff.YResolution` as OpenSlide names them, for `read_mpp`."""
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
    props = {"tiff.ResolutionUnit": {1: "none", 2: "inch", 3: "centimeter"}.get(int(unit) if unit is not None else 2, "inch")}
    for name in ("XResolution", "YResolution"):
        if value := _rational(tags, name):
            props[f"tiff.{name}"] = _fmt(value)
    return props


def _rational(tags, name: str) -> float | None:
    if name not in tags:
        return None
    value = tags[name].value
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else None
    return float(value)


def _fmt(v: float) -> str:
    return f"{v:.6g}"
