"""``yaml.safe_load`` that also refuses "billion laughs" documents and names its source in errors.

Anchors and aliases are legal YAML, but a few hundred bytes of nested aliases can expand into
billions of nodes. The composed node graph is measured (aliases counted at their expanded size,
with memoisation, so the measurement itself is cheap) before any Python object is built.
"""

from __future__ import annotations

from typing import Any

import yaml

from dualpose.errors import ConfigError

MAX_YAML_NODES = 100_000  # nodes after expanding aliases: more is refused


class _BoundedLoader(yaml.SafeLoader):
    """Safe YAML that refuses documents whose aliases expand beyond :data:`MAX_YAML_NODES` nodes."""

    def compose_node(self, parent, index):  # type: ignore[override]
        node = super().compose_node(parent, index)
        if parent is None and node is not None:
            _check_expanded_size(node, self.name)
        return node


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not children_done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        size = 1 + sum(sizes.get(id(c), 1) for c in children)
        sizes[id(node)] = size
        if size > MAX_YAML_NODES:
            raise ConfigError(f"{source}: YAML expands to more than {MAX_YAML_NODES} nodes through aliases/anchors "
                              "(refused: a document this large is not a parameters file)")


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with alias-bomb refusal; errors name ``source``."""
    loader = _BoundedLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{source}: not valid YAML: {detail}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()
