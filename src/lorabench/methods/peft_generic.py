"""Any PEFT method from config alone: ``{type: peft, peft_config: {peft_type: VERA, r: 256, ...}}``.

The mapping is handed to PEFT's own config class for ``peft_type``, so its fields, defaults and messages are
PEFT's. lorabench fills in only what it knows better than the config: the task type, the task head to train
and save (modules_to_save), and the architecture's target modules where the mapping names none."""

from __future__ import annotations

from lorabench.methods.adapter import AdapterMethod, head_modules_present
from lorabench.methods.base import SettingError, register

#: Fields lorabench sets itself; a mapping that gives them is refused (they would contradict the task).
MANAGED_FIELDS = ("task_type", "modules_to_save")


class PeftConfigError(ValueError):
    """The peft_config mapping is not one PEFT accepts; the message is PEFT's, prefixed with what was tried."""


def peft_config_class(peft_type: str):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    key = str(peft_type).upper()
    if key not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise PeftConfigError(f"peft_type '{peft_type}' is not a PEFT method; PEFT {_version()} has: "
                              f"{', '.join(sorted(PEFT_TYPE_TO_CONFIG_MAPPING))}")
    return PEFT_TYPE_TO_CONFIG_MAPPING[key]


def _version() -> str:
    import peft

    return peft.__version__


def make_peft_config(mapping: dict, target_modules: list[str] | None, task_type: str | None,
                     modules_to_save: list[str] | None):
    """PEFT's config object for ``mapping`` (its ``peft_type`` and PEFT's own keyword arguments)."""
    fields = {k: v for k, v in mapping.items() if k != "peft_type"}
    given = [k for k in MANAGED_FIELDS if k in fields]
    if given:
        raise PeftConfigError(f"{', '.join(given)}: set by lorabench from the dataset's task; drop it from peft_config")
    cls = peft_config_class(mapping["peft_type"])
    known = cls.__dataclass_fields__
    if target_modules is not None and "target_modules" in known:
        fields.setdefault("target_modules", target_modules)
    if modules_to_save and "modules_to_save" in known:  # prompt-learning methods have no such field
        fields["modules_to_save"] = modules_to_save
    try:
        return cls(**fields, task_type=task_type)
    except (TypeError, ValueError) as err:  # PEFT's message names the field
        raise PeftConfigError(f"PEFT {_version()} refused {cls.__name__}: {err}") from None


@register("peft")
class PeftAny(AdapterMethod):
    colour = "#bcbd22"

    @classmethod
    def check_settings(cls, params: dict, shape) -> None:
        """PEFT's own config class checks the mapping: its fields, types and messages are PEFT's."""
        super().check_settings(params, shape)
        try:
            make_peft_config(params["peft_config"], None, None, None)
        except PeftConfigError as err:
            raise SettingError("peft_config", str(err)) from None

    def peft_config(self, loader, model):
        return make_peft_config(self.params["peft_config"], self.target_modules, loader.peft_task_type,
                                head_modules_present(model, loader.head_modules) or None)
