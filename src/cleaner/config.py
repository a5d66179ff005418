"""Pipeline configuration: load a YAML config, validate it against the JSON schema, resolve experiments.

The schema (``src/cleaner/schema/config.schema.yaml``, which ``config/schema.yaml`` links to) holds every
default, so the Snakefile (``snakemake.utils.validate``) and the ``cleaner`` CLI see the same values. An
experiment is a named set of overrides deep-merged over the base sections (``rollout``, ``saar``, ``rl``,
``eval``, ...): ``resolve_experiment(config, "cleaner_gamma0.3")``.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["ConfigError", "deep_merge", "load_config", "resolve_experiment", "resolve_regime", "schema",
           "validate_config"]


class ConfigError(ValueError):
    """The configuration is malformed; the message names the offending field."""


def schema() -> dict[str, Any]:
    text = resources.files("cleaner").joinpath("schema/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _fill_defaults(validator_cls):
    """A jsonschema validator class that fills ``default`` values into the instance while validating."""
    from jsonschema import validators

    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sch):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, sch)

    return validators.extend(validator_cls, {"properties": set_defaults})


def _errors(config: dict[str, Any], prefix: str = "") -> list[str]:
    from jsonschema import Draft202012Validator

    cls = _fill_defaults(Draft202012Validator)
    errors = sorted(cls(schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    return [f"  {prefix}{'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}" for e in errors]


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate in place (filling defaults) and return the config; raise ConfigError naming the field.

    Each experiment is validated again after its overrides are merged, so a bad override is reported as
    ``experiments.<name>: rl.lr: ...``.
    """
    lines = _errors(config)
    if not lines:
        for name in config.get("experiments") or {}:
            lines += _errors(resolve_experiment(config, name), prefix=f"experiments.{name}: ")
        lines += _control_errors(config)
    if lines:
        raise ConfigError("invalid configuration:\n" + "\n".join(lines[:10]))
    return config


def _control_errors(config: Mapping[str, Any]) -> list[str]:
    """``experiments.<name>.control`` must name another experiment of the same data regime."""
    experiments = config.get("experiments") or {}
    lines = []
    for name, exp in experiments.items():
        control = (exp or {}).get("control")
        if control is None:
            continue
        where = f"  experiments.{name}.control: "
        if control == name:
            lines.append(where + "an experiment cannot be its own control")
        elif control not in experiments:
            lines.append(where + f"unknown experiment {control!r}; configured: {sorted(experiments)}")
        elif (experiments[control] or {}).get("regime") != (exp or {}).get("regime"):
            lines.append(where + f"{control!r} is in regime {(experiments[control] or {}).get('regime') or 'default'}, "
                         f"{name!r} in {(exp or {}).get('regime') or 'default'}: a control shares the SFT start")
    return lines


def load_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return validate_config(data)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# verl: per-experiment engine settings (e.g. the stock-loop baseline's verl.baseline_agent_loop); the rules' job
# resources (nnodes, GPUs, container) come from the base section.
OVERRIDABLE = ("rollout", "saar", "rl", "eval", "peers", "verl")


def resolve_experiment(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config seen by one experiment: base sections with the experiment's overrides merged in."""
    experiments = config.get("experiments") or {}
    if name not in experiments:
        raise ConfigError(f"unknown experiment {name!r}; configured: {sorted(experiments)}")
    exp = experiments[name] or {}
    bad = sorted(set(exp) - set(OVERRIDABLE) - {"description", "seeds", "steps_from", "regime", "control"})
    if bad:
        raise ConfigError(f"experiments.{name}: cannot override {bad}; overridable sections: {list(OVERRIDABLE)}")
    resolved = resolve_regime(config, exp["regime"]) if exp.get("regime") else copy.deepcopy(dict(config))
    for section in OVERRIDABLE:
        if section in exp:
            resolved[section] = deep_merge(resolved.get(section) or {}, exp[section])
    resolved["experiment"] = name
    if "seeds" in exp:
        resolved["seeds"] = list(exp["seeds"])
    return resolved


def resolve_regime(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config of a testbed data regime: the ``regimes.<name>.testbed`` overrides deep-merged over ``testbed``
    (the regime's data, tokenizer and SFT model live in ``results/<config>/regimes/<name>/``)."""
    regimes = config.get("regimes") or {}
    if name not in regimes:
        raise ConfigError(f"unknown regime {name!r}; configured: {sorted(regimes)}")
    resolved = copy.deepcopy(dict(config))
    resolved["testbed"] = deep_merge(resolved.get("testbed") or {}, (regimes[name] or {}).get("testbed") or {})
    resolved["regime"] = name
    return resolved
