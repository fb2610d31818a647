"""`[callbacks.limits]`: what a sandboxed plugin may use. Its own module so that reading a pipeline
does not import the sandbox machinery."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

LAYERS = ("rlimits", "no_new_privs", "capabilities", "namespaces", "landlock", "seccomp")


class SandboxLimits(BaseModel):
    """``[callbacks.limits]``: what a sandboxed plugin may use."""

    model_config = ConfigDict(extra="forbid")
    cpu_seconds: int = Field(60, ge=1)
    memory_mb: int = Field(1024, ge=16)
    wall_seconds_per_call: float = Field(10.0, gt=0)
    allow_paths: list[str] = Field(default_factory=list)
    network: StrictBool = False
    open_files: int = Field(256, ge=16)
    file_size_mb: int = Field(1024, ge=1)
    gpu: StrictBool = False  # CUDA: no RLIMIT_DATA (its virtual reservations), the RSS watchdog only
    env: list[str] = Field(default_factory=list, description="host environment variables passed through")
    require: list[str] = Field(default_factory=list, description=f"layers that must be active: {', '.join(LAYERS)}")
    on_failure: str = Field("stop", pattern="^(stop|continue)$")

    @field_validator("require")
    @classmethod
    def _known_layers(cls, value: list[str]) -> list[str]:
        # a misspelt layer would otherwise silently drop the guarantee the user asked for
        from ..errors import closest

        for name in value:
            if name not in LAYERS:
                hint = closest(name, list(LAYERS))
                raise ValueError(f"unknown sandbox layer {name!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                                 + f"; layers: {', '.join(LAYERS)}")
        return value
