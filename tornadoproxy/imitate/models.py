"""Which web model answers an OpenAI model name: the ordered, configurable model map.

Keys are OpenAI names; a key ending in `*` is a prefix. An exact key wins over every prefix, prefixes
are tried in the configured order, then the default slug answers any other name (an empty default
turns that off). The answer echoes the client's name, never the slug.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tornadoproxy.errors import Code, NotFound


@dataclass(frozen=True, slots=True)
class ModelMap:
    """`exact` name -> slug, `prefixes` (prefix without `*`, slug) in order, `default` slug or ""."""

    exact: Mapping[str, str]
    prefixes: tuple[tuple[str, str], ...]
    default: str

    @classmethod
    def build(cls, models: Mapping[str, str], default: str) -> ModelMap:
        """From the configuration's ordered mapping; ValueError names an empty key or slug."""
        exact: dict[str, str] = {}
        prefixes: list[tuple[str, str]] = []
        for name, slug in models.items():
            if not name or name == "*" or not slug:
                raise ValueError(f"model map entry {name!r}: names and slugs must not be empty")
            if name.endswith("*"):
                prefixes.append((name[:-1], slug))
            else:
                exact[name] = slug
        return cls(exact=exact, prefixes=tuple(prefixes), default=default)

    def slug_for(self, name: str) -> str | None:
        """The web slug for `name`, through an exact name, a prefix or the default; None if nothing."""
        return self.mapped(name) or self.default or None

    def mapped(self, name: str) -> str | None:
        """The slug through an exact name or a prefix only (what `/models/{id}` answers for)."""
        if name in self.exact:
            return self.exact[name]
        for prefix, slug in self.prefixes:
            if name.startswith(prefix):
                return slug
        return None

    def listed(self) -> Iterable[str]:
        """The exact names, in configured order: what `/models` lists."""
        return self.exact.keys()


def model_not_found(name: str) -> NotFound:
    shown = name if len(name) <= 100 else name[:100] + "..."
    return NotFound(
        Code.MODEL_NOT_FOUND.message.format(model=shown), code=Code.MODEL_NOT_FOUND, param="model"
    )


def resolve_model(models: ModelMap, name: str) -> str:
    """The slug for `name`, or the OpenAI-shaped 404 `model_not_found`."""
    slug = models.slug_for(name)
    if slug is None:
        raise model_not_found(name)
    return slug
