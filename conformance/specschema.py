"""What a spec file may say: its structure and types, as pydantic models.

`conformance.specload` validates a file's YAML against `SpecModel` (a rule's
own spec), `ExtensionModel` (a user's file that `extends` a rule with
targets) or `FrameworkDeclarations` (specs/frameworks/<framework>.yaml),
then compiles it into the frozen `conformance.spec.Spec`.
"""

from __future__ import annotations

import re
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from .dtypes import DTYPES as DTYPE_TABLE

DTYPES = tuple(DTYPE_TABLE)
#: Names every step can read besides hyperparameters and state.
STEP_INPUTS = ("p", "g", "t", "lr", "slice_sq", "slice_abs")
_RULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

Number = Union[StrictBool, int, float]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Domain(_Model):
    """Where hypothesis draws a numeric hyperparameter from."""

    low: float
    high: float
    log: bool = False
    special: list[float] = Field(default_factory=list, description="values drawn with priority (0, defaults)")


class Hyperparameter(_Model):
    default: Number
    doc: str
    domain: Domain | None = None


class StateSlot(_Model):
    init: str | float
    doc: str


class VariantModel(_Model):
    explain: str
    cite: str
    equations: list[str] = Field(default_factory=list)
    state: dict[str, str | float] = Field(default_factory=dict, description="state slots whose initial value differs")
    sparse: Literal["dense", "lazy"] | None = None
    precision: bool = Field(
        default=False,
        description=(
            "the variant is a framework's own lower precision written as equations (in_dtype,"
            " float32): part of what the framework computes for the semantics axis, a cause of"
            " precision loss against the exact rule for the precision axis"
        ),
    )


class Unsupported(_Model):
    reason: str
    when: str | None = None
    modes: list[str] | None = None


class KnownIssue(_Model):
    """A framework bug, established with evidence, reported as known instead of failing.

    Like array-api-tests' expected-failure files: the divergence is still
    recorded, and an issue that no longer reproduces is reported as stale.
    """

    reason: str
    evidence: str
    modes: list[str] | None = None
    devices: list[str] | None = None
    dtypes: list[Literal["float16", "bfloat16", "float32", "float64"]] | None = None
    when: str | None = Field(default=None, description="only for cases whose hyperparameters make this true")
    gradients: Literal["dense", "sparse"] | None = Field(default=None, description="only for dense or only for sparse gradients")
    raises: str | list[str] | None = Field(
        default=None,
        description=(
            "the issue is an error the framework raises: a case that crashes with this text (or one of"
            " these texts) in its error is reported as this known issue (and only such a case)"
        ),
    )


class SparseDecl(_Model):
    """How a framework mode treats gradients that touch only some rows."""

    semantics: Literal["dense", "lazy", "unsupported"]
    note: str | None = None
    cite: str | None = None
    lazy_when: str | None = Field(
        default=None, description="semantics dense, but lazy for the cases where this condition holds (e.g. momentum == 0)"
    )
    duplicates: bool = Field(
        default=True, description="the native sparse form may list a row twice (its slices are summed, or not: see expect)"
    )
    expect: list[str] = Field(
        default_factory=list, description="variants that apply to sparse gradients only (on top of the mode's expect)"
    )
    unsupported: list["Unsupported"] = Field(
        default_factory=list, description="options the framework refuses with sparse gradients (each a skip with its reason)"
    )


InputDtype = Literal["float16", "bfloat16", "float32", "tensor"]
#: one rounding, or successive ones: [float32, tensor] is a Python float made a
#: float32 tensor, then cast to the parameter's dtype (TF1 training ops)
InputRounding = Union[InputDtype, list[InputDtype]]

ArgValue = Union[str, StrictInt, float, StrictBool, list[Union[str, StrictInt, float]]]


class ModeModel(_Model):
    """A mode of a framework; any field given here overrides the framework's."""

    optimizer: str | None = None
    args: dict[str, ArgValue] | None = None
    state: dict[str, str] | None = None
    defaults: dict[str, Number] | None = None
    expect: list[str] | None = None
    sparse: SparseDecl | None = None
    source: str | None = None
    devices: list[str] | None = None
    dtypes: list[Literal["float16", "bfloat16", "float32", "float64"]] | None = None
    hyperparameter_dtype: Literal["float64", "float32", "tensor", "cast"] | None = Field(
        default=None,
        description=(
            "the precision the framework gives hyperparameters: float64 (Python floats), float32,"
            " tensor (each scalar operand rounded to the parameter's dtype where it meets an array,"
            " torch foreach), cast (hyperparameters cast to the parameter's dtype before any"
            " arithmetic, Keras)"
        ),
    )
    gradients: Literal["dense", "sparse"] | None = Field(
        default=None, description="sparse: the mode takes sparse gradients only (e.g. torch.optim.SparseAdam)"
    )
    input_dtypes: dict[str, InputRounding] | None = None
    note: str | None = None


class FrameworkModel(_Model):
    #: a target of the user's own (a key that is not a framework name) names
    #: the framework whose adapter runs it: `framework: torch`
    framework: str | None = None
    optimizer: str
    source: str
    args: dict[str, ArgValue]
    state: dict[str, str] = Field(default_factory=dict)
    defaults: dict[str, Number] = Field(default_factory=dict)
    modes: dict[str, ModeModel]
    expect: list[str] = Field(default_factory=list)
    unsupported: list[Unsupported] = Field(default_factory=list)
    sparse: SparseDecl
    note: str | None = None
    hyperparameter_dtype: Literal["float64", "float32", "tensor", "cast"] = "float64"
    input_dtypes: dict[str, InputRounding] = Field(
        default_factory=dict,
        description=(
            "hyperparameters the framework stores in a narrower dtype before any arithmetic"
            " (Keras keeps lr in a float32 variable): the case's values are rounded to it,"
            " for the framework and the reference alike"
        ),
    )
    known_issues: list["KnownIssue"] = Field(default_factory=list)

    @field_validator("modes")
    @classmethod
    def _some_mode(cls, v: dict[str, ModeModel]) -> dict[str, ModeModel]:
        if not v:
            raise ValueError("at least one mode is required")
        return v


class ExtensionModel(_Model):
    """A user's file that adds targets to a rule defined elsewhere (`extends`)."""

    extends: str
    #: variants of the user's own (a library's documented difference), named and cited like the spec's
    variants: dict[str, VariantModel] = Field(default_factory=dict)
    frameworks: dict[str, FrameworkModel]

    @field_validator("frameworks")
    @classmethod
    def _some_target(cls, v: dict[str, FrameworkModel]) -> dict[str, FrameworkModel]:
        if not v:
            raise ValueError("at least one target is required")
        return v


class ToleranceModel(_Model):
    floor_ulps: float | None = Field(default=None, ge=0)
    noise_factor: float | None = Field(default=None, gt=0)


class SpecModel(_Model):
    title: str
    summary: str
    references: list[str]
    hyperparameters: dict[str, Hyperparameter]
    state: dict[str, StateSlot] = Field(default_factory=dict)
    step: list[str]
    variants: dict[str, VariantModel] = Field(default_factory=dict)
    frameworks: dict[str, FrameworkModel] = Field(default_factory=dict)
    tolerance: dict[Literal["float16", "bfloat16", "float32", "float64"], ToleranceModel] = Field(default_factory=dict)
    cases: list[str] = Field(default_factory=list)
    ranks: list[Literal[0, 1, 2, 3]] = Field(
        default_factory=lambda: [0, 1, 2, 3],
        min_length=1,
        description=(
            "the tensor ranks the rule is defined for and the strategies draw (default: scalars,"
            " vectors, matrices and 3-d tensors); Muon is defined for matrices only"
        ),
    )
    increments: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "intermediates that frameworks may compute as an increment of another value (Lion's"
            " c = beta1*m + (1 - beta1)*g as m + (1 - beta1)*(g - m), torch.lerp): the rounding model"
            " gives them the error such an increment has (u times that value), as it does for every state slot"
        ),
    )


class FrameworkDeclarations(_Model):
    """specs/frameworks/<framework>.yaml: what is true of every optimizer of a
    framework whatever the rule, written once instead of in every spec."""

    summary: str
    unsupported: list[Unsupported] = Field(default_factory=list)
