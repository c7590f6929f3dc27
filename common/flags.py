"""Command-line flags declared on the fields of a settings dataclass: the one way train.py
(``training.config.TrainConfig``) and search.py (``search.trainer.SearchConfig``,
``search.tas.TASConfig``) build their flags, so the record and its flags cannot drift apart.

- ``setting(default, help, ...)``: a dataclass field that carries its flag: ``--w-lr`` for
  ``w_lr`` (``--no-progress`` for a True-by-default switch, ``negate=True``), its argparse type
  (the annotation, or ``type=``: a ``cli.integer`` / ``cli.number`` check refuses an
  out-of-range value while parsing, as the argument's one-line error), choices, metavar,
  ``nargs`` (a flag of several values, kept as a tuple: ``--crop-scale 0.08 1``) and argument
  group; other keywords are kept as metadata for the record's own use.
- ``like(config_class, name, default)``: the same setting as another record's, with its own
  default (the two searches share help texts and bounds).
- ``add_flags(parser, config_class)``: one flag per field. A flag stays None unless typed, so
  ``given(config_class, args)`` is exactly what the user typed: a resumed run can refuse changed
  settings, and recipe or data-set defaults can sit below the typed flags. The help names the
  field's default instead: ``(default: X)``, unless X is None or the flag is a switch.
"""
import dataclasses
import typing

def setting(default, help, *, type=None, choices=None, metavar=None, negate=False, group=None,
            **extra):
    """A dataclass field with its command-line flag (see the module docstring)."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, type=type, choices=choices, metavar=metavar, negate=negate, group=group,
        **extra))


def like(config_class, name, default):
    """``config_class``'s setting ``name`` (help, type, bounds ...) with another default."""
    field = {f.name: f for f in dataclasses.fields(config_class)}[name]
    return dataclasses.field(default=default, metadata=field.metadata)


def flag(field):
    """The flag of a field: ``--eval-image-size``, ``--no-progress``."""
    return "--" + ("no-" if field.metadata["negate"] else "") + field.name.replace("_", "-")


def _type(field):
    kind = field.metadata["type"] or field.type
    if typing.get_origin(kind) is typing.Union:  # Optional[str]: the flag takes a str
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return kind


def add_flags(parser, config_class, help=None):
    """Add one flag per field of ``config_class`` to ``parser``; ``help`` replaces the help
    text of the named fields (as written, no default appended). Returns ``parser``."""
    groups = {None: parser}
    for field in dataclasses.fields(config_class):
        m = field.metadata
        text = m["help"]
        kwargs = dict(dest=field.name, default=None)
        if _type(field) is bool:
            kwargs["action"] = "store_false" if m["negate"] else "store_true"
        else:
            kwargs.update(type=_type(field), choices=m["choices"], metavar=m["metavar"])
            if m.get("nargs"):
                kwargs["nargs"] = m["nargs"]
            if field.default is not None:
                text = "%s (default: %s)" % (text, field.default)
        if m["group"] not in groups:
            groups[m["group"]] = parser.add_argument_group(m["group"])
        groups[m["group"]].add_argument(flag(field), help=(help or {}).get(field.name, text),
                                        **kwargs)
    return parser


def given(config_class, args):
    """{field: value} of the flags of ``config_class`` that the user typed (a flag of several
    values as a tuple)."""
    typed = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
             if getattr(args, f.name, None) is not None}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in typed.items()}
