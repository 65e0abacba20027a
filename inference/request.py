"""The one generation request shared by the bot, the worker and the CLI.

It is validated once, at the edge (`GenerationRequest.validate()`), and then passed through
unchanged. The semantics of every field are audiocraft's MusicGen (the README's Commands table).
Each field is declared once, below: its name, type, default, range and help; `REQUEST_FIELDS` reads
them back for the front ends (the /generate slash command, the CLI's `generate`). `Takes`, how many
variations of one request to make at once, is declared the same way beside it (`GENERATE_FIELDS`:
everything those front ends offer).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from inference.windows import RELEASED_MODEL_WINDOW_S

ModelVersion = Literal[
    "melody",
    "small",
    "medium",
    "large",
    "melody-large",
    "stereo-small",
    "stereo-medium",
    "stereo-large",
    "stereo-melody",
    "stereo-melody-large",
    "encode-decode",
    "finetuned",
]
NormalizationStrategy = Literal["loudness", "clip", "peak", "rms"]
OutputFormat = Literal["wav", "mp3"]

MODEL_VERSIONS: tuple[str, ...] = get_args(ModelVersion)
NORMALIZATION_STRATEGIES: tuple[str, ...] = get_args(NormalizationStrategy)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)

MIN_DURATION_S = 1
# `[limits] max_duration_s`'s default, and so `duration`'s declared maximum: the front ends offer the
# configured value instead, and pass it to `validate()`. Longer than the model's window (see
# inference.windows), a piece is made window by window, as audiocraft extends it.
DEFAULT_MAX_DURATION_S = 120
MAX_SEED = 2**32 - 1  # numpy's seed range, the narrowest of the three we seed
MAX_TOP_K = 2048  # the codebook size: a larger k is the same as no top-k
MAX_TEMPERATURE = 10.0
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 1000
# Seconds computed from sample counts carry floating-point error (3.02 + 29.0 - 3.02 is
# 29.000000000000004): budgets are compared with this slack, far below one sample at 32 kHz.
_SECONDS_TOLERANCE = 1e-6


class RequestError(ValueError):
    """A request a person can fix; the message says what to change and is shown to them as is."""


_DISCORD_DESCRIPTION_LIMIT = 100


@dataclass(frozen=True)
class InputText:
    """What a field of `GenerationRequest` declares beyond its name, type and default."""

    # The slash option's description, which Discord limits to 100 characters; the CLI shows it too.
    help: str
    # Bounds of a number, or of a text's length.
    minimum: int | float | None = None
    maximum: int | float | None = None
    # The input that means None (left to the engine: a random seed, the clip's end).
    unset: int | float | None = None
    # A clip: a local file path on the request, an upload on Discord, an existing file for the CLI.
    clip: bool = False
    # Left out, a front end picks the value itself (the server's or the configured default model).
    picked_when_left_out: bool = False
    # More for the CLI's help, after `help`.
    cli_extra: str = ""

    def __post_init__(self) -> None:
        if len(self.help) > _DISCORD_DESCRIPTION_LIMIT:
            raise ValueError(
                f"help longer than Discord's {_DISCORD_DESCRIPTION_LIMIT} characters: {self.help!r}"
            )


@dataclass(frozen=True, kw_only=True)
class RequestField(InputText):
    """One request field as every front end offers it, read back from `GenerationRequest`."""

    name: str
    # The value's type once set: str, int, float or bool (a clip's is its path, a str).
    type: type
    default: Any
    # The allowed values of a Literal field.
    choices: tuple[str, ...] = ()

    @property
    def cli_help(self) -> str:
        return f"{self.help} {self.cli_extra}".strip()

    @property
    def lowest_input(self) -> int | float | None:
        """The lowest value a front end takes: the `unset` spelling where there is one."""
        return self.unset if self.unset is not None else self.minimum


_INPUT_TEXT = "input_text"


def _offered(text: InputText) -> dict[str, InputText]:
    """A request field's metadata: its `InputText`, read back into `REQUEST_FIELDS`."""
    return {_INPUT_TEXT: text}


@dataclass(frozen=True)
class GenerationRequest:
    """Every field is declared here once, with its help and range, for every front end to use."""

    # Laid out by hand, one field to a few lines: a table reads better than one argument a line.
    # fmt: off
    model_version: ModelVersion = field(default="finetuned", metadata=_offered(InputText(
        "Which model; encode-decode only runs your clip through EnCodec. Left out: the default model.",
        picked_when_left_out=True)))
    prompt: str | None = field(default=None, metadata=_offered(InputText(
        "What the music should sound like.", minimum=1, maximum=MAX_PROMPT_CHARS)))
    # A local file path: the melody to mimic, or (continuation=True) the clip to continue.
    input_audio: str | None = field(default=None, metadata=_offered(InputText(
        "A melody to follow (melody model), or with continuation, a clip to continue.",
        clip=True, cli_extra="Any common audio format.")))
    # Seconds of audio to generate; for continuation, the seconds added after the prompt clip.
    duration: int = field(default=8, metadata=_offered(InputText(
        "Seconds to generate (with continuation: seconds added after the clip).",
        minimum=MIN_DURATION_S, maximum=DEFAULT_MAX_DURATION_S)))
    continuation: bool = field(default=False, metadata=_offered(InputText(
        "Continue the input audio instead of following its melody.")))
    continuation_start: float = field(default=0.0, metadata=_offered(InputText(
        "Use the input audio from this second on.", minimum=0.0)))
    # None (or -1 on input) means the end of the clip.
    continuation_end: float | None = field(default=None, metadata=_offered(InputText(
        "Use the input audio up to this second (-1 = to the end).",
        minimum=0.0, unset=-1.0, cli_extra="Left out: the end too.")))
    normalization_strategy: NormalizationStrategy = field(default="loudness", metadata=_offered(InputText(
        "How the output loudness is normalized.")))
    # 0 (with top_p 0) samples from the whole distribution, as audiocraft does.
    top_k: int = field(default=250, metadata=_offered(InputText(
        "Sample among the k most likely tokens (0 = all of them).", minimum=0, maximum=MAX_TOP_K)))
    # > 0 switches to nucleus sampling and top_k is then ignored (audiocraft's rule).
    top_p: float = field(default=0.0, metadata=_offered(InputText(
        "Nucleus sampling when above 0 (then top_k is ignored).", minimum=0.0, maximum=1.0)))
    # 0 means greedy decoding.
    temperature: float = field(default=1.0, metadata=_offered(InputText(
        "Randomness; 0 = always the most likely token.",
        minimum=0.0, maximum=MAX_TEMPERATURE, cli_extra="The softmax temperature (0: greedy decoding).")))
    classifier_free_guidance: float = field(default=3.0, metadata=_offered(InputText(
        "How closely to follow the prompt.",
        minimum=0.0, maximum=MAX_GUIDANCE, cli_extra="The classifier-free guidance coefficient.")))
    output_format: OutputFormat = field(default="wav", metadata=_offered(InputText(
        "File format of the result.", cli_extra="wav (16-bit PCM) or mp3 (320 kbps).")))
    # None (or -1 on input): a random seed is chosen and reported back.
    seed: int | None = field(default=None, metadata=_offered(InputText(
        "Same seed + same settings = same music; -1 = random.",
        minimum=0, maximum=MAX_SEED, unset=-1, cli_extra="Left out: random too. The seed used is printed.")))
    # fmt: on

    def __post_init__(self) -> None:
        # -1 is the predictor's spelling of "none"; normalise it here so every layer sees one form.
        if self.seed is not None and self.seed == -1:
            object.__setattr__(self, "seed", None)
        if self.continuation_end is not None and self.continuation_end == -1:
            object.__setattr__(self, "continuation_end", None)
        if self.prompt is not None:
            stripped = self.prompt.strip()
            object.__setattr__(self, "prompt", stripped or None)

    # -- validation -----------------------------------------------------------------------------
    def validate(self, *, max_duration_s: int = DEFAULT_MAX_DURATION_S) -> GenerationRequest:
        """Check everything that can be checked without the model or the audio; returns self.

        `max_duration_s`: the longest `duration` allowed here (`[limits] max_duration_s`)."""
        self._check_number_types()
        if self.model_version not in MODEL_VERSIONS:
            raise RequestError(
                f"Unknown model version {self.model_version!r}: choose one of {', '.join(MODEL_VERSIONS)}."
            )
        if self.normalization_strategy not in NORMALIZATION_STRATEGIES:
            raise RequestError(
                f"Unknown normalization strategy {self.normalization_strategy!r}: "
                f"choose one of {', '.join(NORMALIZATION_STRATEGIES)}."
            )
        if self.output_format not in OUTPUT_FORMATS:
            raise RequestError(f"Unknown output format {self.output_format!r}: choose wav or mp3.")
        if self.prompt is not None and len(self.prompt) > MAX_PROMPT_CHARS:
            raise RequestError(
                f"The prompt is too long ({len(self.prompt)} characters, at most {MAX_PROMPT_CHARS})."
            )
        if not MIN_DURATION_S <= self.duration <= max_duration_s:
            raise RequestError(
                f"Duration must be between {MIN_DURATION_S} and {max_duration_s} seconds (got {self.duration})."
            )
        if self.model_version == "encode-decode":
            if self.input_audio is None:
                raise RequestError("encode-decode needs input audio: attach the clip to run through EnCodec.")
        elif self.prompt is None and self.input_audio is None:
            raise RequestError("Give a prompt, input audio, or both.")
        if self.continuation and self.input_audio is None:
            raise RequestError("Continuation needs input audio: attach the clip to continue.")
        if self.continuation_start < 0:
            raise RequestError("continuation_start cannot be negative.")
        if self.continuation_end is not None:
            if self.continuation_end < 0:
                raise RequestError(
                    "continuation_end must be a positive number of seconds, or -1 for the end of the clip."
                )
            if self.continuation_start >= self.continuation_end:
                raise RequestError(
                    f"continuation_start ({self.continuation_start:g} s) must be before "
                    f"continuation_end ({self.continuation_end:g} s)."
                )
        if self.top_k < 0 or self.top_k > MAX_TOP_K:
            raise RequestError(f"top_k must be between 0 and {MAX_TOP_K} (got {self.top_k}).")
        if not 0.0 <= self.top_p <= 1.0:
            raise RequestError(f"top_p must be between 0 and 1 (got {self.top_p:g}); 0 means use top_k.")
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise RequestError(
                f"temperature must be between 0 and {MAX_TEMPERATURE:g} (got {self.temperature:g})."
            )
        if not 0.0 <= self.classifier_free_guidance <= MAX_GUIDANCE:
            raise RequestError(
                f"classifier_free_guidance must be between 0 and {MAX_GUIDANCE:g} (got {self.classifier_free_guidance:g})."
            )
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise RequestError(
                f"seed must be between 0 and {MAX_SEED}, or -1 for a random seed (got {self.seed})."
            )
        return self

    def _check_number_types(self) -> None:
        """Whole numbers where whole numbers belong, and no NaN or infinity anywhere.

        NaN slips through every range check (all its comparisons are false), and a float duration or
        top_k would reach the model as a float: both are refused here, whatever the front end.
        """
        for name in _WHOLE_NUMBER_FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RequestError(f"{name} must be a whole number (got {value!r}).")
        for name in _REAL_NUMBER_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RequestError(f"{name} must be a finite number (got {value!r}).")

    def check_input_length(self, input_seconds: float, *, window_s: float = RELEASED_MODEL_WINDOW_S) -> None:
        """Checks that need the decoded length of the input audio: the trim, and for a continuation
        that the clip leaves the model's window (`window_s`) room for new audio, as audiocraft
        requires (the new seconds themselves may go past the window: the piece is then extended)."""
        if self.input_audio is None:
            return
        if self.continuation_start >= input_seconds:
            raise RequestError(
                f"continuation_start ({self.continuation_start:g} s) is past the end of the clip ({input_seconds:.1f} s)."
            )
        end = input_seconds if self.continuation_end is None else min(self.continuation_end, input_seconds)
        used = end - self.continuation_start
        if self.continuation and used >= window_s - _SECONDS_TOLERANCE:
            raise RequestError(
                f"The clip to continue must be shorter than {window_s:g} s (the model's window). "
                "Trim it with continuation_start/continuation_end."
            )

    # -- plumbing -------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise RequestError(f"Unknown request field(s): {', '.join(sorted(unknown))}.")
        return cls(**data)

    def non_default_fields(self) -> dict[str, Any]:
        """The fields a person changed from the defaults (for embeds and summaries)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(REQUEST_DEFAULTS, f.name)
        }


def _value_type(hint: Any) -> tuple[type, tuple[str, ...]]:
    """The type of a field's value once set, and the choices of a Literal (`int | None` -> int)."""
    if get_origin(hint) in (Union, UnionType):
        (hint,) = [arg for arg in get_args(hint) if arg is not type(None)]
    if get_origin(hint) is Literal:
        return str, get_args(hint)
    return hint, ()


def _declared_fields(owner: type) -> tuple[RequestField, ...]:
    """The fields a dataclass declares with `_offered` metadata (`GenerationRequest`, `Takes`), in order."""
    hints = get_type_hints(owner)
    declared = []
    for request_field in dataclasses.fields(owner):
        value_type, choices = _value_type(hints[request_field.name])
        text: InputText = request_field.metadata[_INPUT_TEXT]
        declared.append(
            RequestField(
                name=request_field.name,
                type=value_type,
                default=request_field.default,
                choices=choices,
                **{part.name: getattr(text, part.name) for part in dataclasses.fields(InputText)},
            )
        )
    return tuple(declared)


# Every request field, in the request's order: the slash command and the CLI are built from these.
REQUEST_FIELDS = _declared_fields(GenerationRequest)
_WHOLE_NUMBER_FIELDS = tuple(each.name for each in REQUEST_FIELDS if each.type is int)
_REAL_NUMBER_FIELDS = tuple(each.name for each in REQUEST_FIELDS if each.type is float)

# Every input's default, for the front ends (slash command options, CLI flags) to show and use.
REQUEST_DEFAULTS = GenerationRequest()


# -- takes: several variations of one request, made at once --------------------------------------
# One message holds at most 10 files: 4 takes and their 4 waveform pictures fit.
MAX_TAKES = 4


@dataclass(frozen=True)
class Takes:
    """How many variations of one request are made at once (`/generate takes`, the CLI's `--takes`).

    Not an input of the model, so not a field of `GenerationRequest`: each take is a request of its
    own (what its job row records and `/replay` makes again) that differs from the others only in
    its seed (`seeds`). It is declared the same way, and the front ends offer it with the request's
    fields (`GENERATE_FIELDS`).
    """

    # fmt: off
    takes: int = field(default=1, metadata=_offered(InputText(
        "How many variations to make at once, each with its own seed (posted together).",
        minimum=1, maximum=MAX_TAKES)))
    # fmt: on

    def validate(self) -> Takes:
        if isinstance(self.takes, bool) or not isinstance(self.takes, int):
            raise RequestError(f"takes must be a whole number (got {self.takes!r}).")
        if not 1 <= self.takes <= MAX_TAKES:
            raise RequestError(f"takes must be between 1 and {MAX_TAKES} (got {self.takes}).")
        return self

    def seeds(self, seed: int | None) -> list[int | None]:
        """Each take's seed, take 1 first.

        With a seed S, take i (counted from 1) uses (S + i - 1) mod 2**32: take 1 is the request made
        alone, and the same seed makes the same takes again. Without one (None), every take's seed is
        drawn at random where seeds are drawn (None here).
        """
        if seed is None:
            return [None] * self.takes
        return [(seed + index) % (MAX_SEED + 1) for index in range(self.takes)]


TAKES_FIELDS = _declared_fields(Takes)
TAKES_DEFAULTS = Takes()
# Every input `/generate` and the CLI's `generate` offer, in order: the request's fields, then takes.
GENERATE_FIELDS = REQUEST_FIELDS + TAKES_FIELDS


def batch_key(request: GenerationRequest, model_source: str | None = None) -> tuple[str, ...] | None:
    """Requests with equal keys may decode as one batch; None: the request runs alone.

    The same model (version and checkpoint) and the same kind of conditioning share a batch: text
    jobs with text jobs, melody jobs with melody jobs; seeds, sampling settings, durations and
    normalisations may all differ. A continuation is a text job whose clip is its prompt: the
    decoder counts each row's positions from its own start, so prompts of different lengths share a
    batch (with `[engine] decoder = "transformers"` the engine decodes each length in turn).
    encode-decode has no decoder to share: it runs alone.
    """
    if request.model_version == "encode-decode":
        return None
    follows_melody = request.input_audio is not None and not request.continuation
    return (request.model_version, model_source or "", "melody" if follows_melody else "text")
