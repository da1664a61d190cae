"""Reading a YAML configuration file (report and reproduce configs) with one set of clear errors."""
from __future__ import annotations

from pathlib import Path


def read_mapping(path: str | Path, allowed_keys, error: type[Exception], missing_hint: str = "") -> dict:
    """The mapping in the YAML file ``path`` (``yaml.safe_load``: no code runs), with its keys checked against
    ``allowed_keys``; every problem raises ``error`` naming the file and the fix. ``missing_hint`` is added
    to the message for a file that does not exist."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise error(f"no configuration file at {str(p)!r}{missing_hint}")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{p} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise error(f"{p} must hold a mapping with keys among {list(allowed_keys)}")
    unknown = sorted(set(cfg) - set(allowed_keys))
    if unknown:
        raise error(f"{p}: unknown key(s) {unknown}; allowed: {list(allowed_keys)}")
    return cfg
