"""The base of every params section: unknown keys are refused (a typo fails at load with the key's name) and a loaded
section is frozen."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
