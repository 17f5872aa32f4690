"""How a compressed model is saved and loaded; its size is the byte count of the folder.

A folder holds
  speech_lab.safetensors
                     the state_dict. Tied tensors are stored once. A float tensor with many exact
                     zeros is stored as "<name>@mask" (1 bit per element, packed) + "<name>@values"
                     (the nonzeros in order) whenever that takes fewer bytes. A uint8 buffer that its
                     module lists in `coded_buffers` (codes of a quantize step with entropy_code) is
                     stored as "<name>@deflate": Huffman-coded bytes (zlib, with a checksum), again
                     only when smaller. Deliberately not called model.safetensors: no Hugging Face
                     loader may take these packed tensors for a checkpoint of its own (core.io.folders
                     also marks config.json so that `from_pretrained` refuses the folder). Artifacts
                     written before the rename hold it as model.safetensors; they load as before.
  layout.json        {"format": "speech-lab-layout", "version": 1,
                      "modules": {path: {"kind": kind, **layout}},  # modules the base model would not build
                      "attrs":   {path: {name: value}},             # plain attributes to restore
                      "ties":    {alias: source},                   # e.g. proj_out.weight ->
                                                                    # ...embed_tokens.weight
                      "sparse":  {name: shape},
                      "coded":   {name: shape},                # optional: files written before it have none
                      "checksums": {stored name: sha256[:16]}} # of every tensor in the file, checked on load

Loading starts from a skeleton: the base model built from its config (random or uninitialised
weights). Modules are replaced per "modules" (parents before children), attributes set, ties
re-made, then the state_dict is loaded strictly and each module's derived caches are rebuilt.

Contract for module classes that replace layers (listed in their technique's `modules`, core.compress):
  class LowRankLinear(nn.Module):
      layout_kind = "low_rank_linear"            # unique name, written as "kind"
      def layout(self) -> dict: ...              # JSON-able constructor facts: shapes, rank, bits; no tensors
      @classmethod
      def from_layout(cls, layout: dict): ...    # an empty module whose state_dict has the same
                                                 # keys/shapes/dtypes
      def refresh(self): ...                     # optional: rebuild non-persistent caches after loading
      def adopt(self, original): ...             # optional: learn from the skeleton's module it replaces
Classes are found by `layout_kind` among the registered techniques' modules (core.compress.registry).
A registered module's children are built by its from_layout
(only children that are themselves replaced, e.g. a QuantLinear inside a LowRankLinear, get entries).
Plain torch layers whose shape differs from what `type(model)(model.config)` builds (e.g. a
structurally pruned Linear) are recorded as builtin kinds: {"kind": "linear", "in", "out", "bias"},
"embedding", "conv1d", "layer_norm". A module may carry `layout_attrs = {"num_heads": 4}` (JSON
scalars) to have those attributes set on the skeleton's module at the same path (e.g. pruned attention).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core.compress.packing import huffman_decode, huffman_encode, pack_bits, unpack_bits
from core.compress.registry import layer_classes
from core.compress.technique import conv1d_layout
from core.models import family_of

WEIGHTS_FILE = "speech_lab.safetensors"
LEGACY_WEIGHTS_FILE = "model.safetensors"  # what artifacts written before the rename call it: still loaded
LAYOUT_FILE = "layout.json"
FORMAT = "speech-lab-layout"
VERSION = 1
SPARSE_MARGIN = 64  # bytes a sparse pair must save over dense (it costs an extra header entry)


def _has_layout(module: nn.Module) -> bool:
    """True for a layer class that follows the contract above
    (its own layout_kind, layout(), from_layout())."""
    kind = type(module).__dict__.get("layout_kind")
    if not isinstance(kind, str):
        return False
    if not callable(getattr(module, "layout", None)) or not callable(
        getattr(type(module), "from_layout", None)
    ):
        raise ValueError(
            f"{type(module).__name__} needs a str layout_kind, layout() and a from_layout() classmethod"
        )
    return True


# ----------------------------------------------------------------------------- plain torch layers


def _linear_layout(m: nn.Linear) -> dict:
    return {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None}


_BUILTIN: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict], Callable[[dict], nn.Module]]] = {
    "linear": (nn.Linear, _linear_layout, lambda d: nn.Linear(d["in"], d["out"], d["bias"])),
    "embedding": (
        nn.Embedding,
        lambda m: {"num": m.num_embeddings, "dim": m.embedding_dim, "padding_idx": m.padding_idx},
        lambda d: nn.Embedding(d["num"], d["dim"], d["padding_idx"]),
    ),
    "conv1d": (
        nn.Conv1d,
        conv1d_layout,
        lambda d: nn.Conv1d(
            d["in"], d["out"], d["kernel"], d["stride"], d["padding"], d["dilation"], d["groups"], d["bias"]
        ),
    ),
    "layer_norm": (
        nn.LayerNorm,
        lambda m: {
            "shape": list(m.normalized_shape),
            "eps": m.eps,
            "affine": m.elementwise_affine,
            "bias": m.bias is not None,
        },
        lambda d: nn.LayerNorm(d["shape"], d["eps"], d["affine"], bias=d["bias"]),
    ),
}
_BUILTIN_KIND = {cls: kind for kind, (cls, _, _) in _BUILTIN.items()}


def _tensor_shapes(module: nn.Module) -> dict:
    return {
        name: tuple(t.shape)
        for name, t in list(module._parameters.items()) + list(module._buffers.items())
        if t is not None
    }


def _reference(model: nn.Module) -> dict[str, nn.Module] | None:
    """The modules `type(model)(model.config)` builds (on the meta device), or None if it cannot be built."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    try:
        with torch.device("meta"):
            return dict(type(model)(config).named_modules())
    except Exception:  # not a config-built model: every plain layer gets recorded instead
        return None


def _layout_entries(model: nn.Module) -> dict[str, dict]:
    reference = _reference(model)
    entries, covered = {}, []
    for path, module in model.named_modules():
        if not path:
            continue
        inside = any(path.startswith(prefix + ".") for prefix in covered)
        if _has_layout(module):
            entries[path] = {"kind": type(module).layout_kind, **module.layout()}
            covered.append(path)
        elif type(module) in _BUILTIN_KIND:
            base = None if reference is None else reference.get(path)
            if not inside and (
                base is None
                or type(base) is not type(module)
                or _tensor_shapes(base) != _tensor_shapes(module)
            ):
                kind = _BUILTIN_KIND[type(module)]
                entries[path] = {"kind": kind, **_BUILTIN[kind][1](module)}
        elif reference is not None and not inside and type(reference.get(path)) is not type(module):
            raise ValueError(
                f"cannot save module {path} ({type(module).__name__}): its class has no layout; "
                "give it layout_kind, layout() and from_layout() (see core.io.artifact)"
            )
    return entries


def _build(kind: str, layout: dict, classes: dict[str, type[nn.Module]]) -> nn.Module:
    if kind in _BUILTIN:
        return _BUILTIN[kind][2](layout)
    if kind not in classes:
        raise KeyError(kind)
    return classes[kind].from_layout(layout)


# ----------------------------------------------------------------------------- ties


def _tensors(model: nn.Module):
    """(qualified name, owner module, attribute, tensor, persistent) for every parameter and buffer,
    ties repeated."""
    for path, module in model.named_modules(remove_duplicate=False):
        prefix = f"{path}." if path else ""
        for attr, tensor in module._parameters.items():
            if tensor is not None:
                yield prefix + attr, module, attr, tensor, True
        for attr, tensor in module._buffers.items():
            if tensor is not None:
                yield prefix + attr, module, attr, tensor, attr not in module._non_persistent_buffers_set


def _find_ties(model: nn.Module) -> dict[str, str]:
    """alias -> source for tensors held by several modules; the source is the first persistent holder."""
    holders: dict[int, list[tuple[str, bool]]] = {}
    for name, _, _, tensor, persistent in _tensors(model):
        holders.setdefault(id(tensor), []).append((name, persistent))
    ties = {}
    for names in holders.values():
        if len(names) > 1:
            source = next((n for n, p in names if p), names[0][0])
            ties.update({n: source for n, _ in names if n != source})
    return ties


def _tie(model: nn.Module, alias: str, source: str) -> None:
    """Make `alias` the very tensor `source` is: a parameter stays a parameter,
    a buffer becomes non-persistent."""
    tensors = {name: tensor for name, _, _, tensor, _ in _tensors(model)}
    if source not in tensors:
        raise ValueError(f"{LAYOUT_FILE}: tie source {source} is not a tensor of the model")
    path, _, attr = alias.rpartition(".")
    try:
        owner = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{LAYOUT_FILE}: tie alias {alias} names no module of the model") from None
    tensor = tensors[source]
    owner._parameters.pop(attr, None)
    owner._buffers.pop(attr, None)
    owner._non_persistent_buffers_set.discard(attr)
    try:
        if isinstance(tensor, nn.Parameter):
            owner.register_parameter(attr, tensor)
        else:
            owner.register_buffer(attr, tensor, persistent=False)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{LAYOUT_FILE}: cannot tie {alias} to {source}: {exc}") from None


# ----------------------------------------------------------------------------- sparse storage


def _zero_mask(tensor: torch.Tensor) -> torch.Tensor:
    """True where the value is exactly +0.0 (bit pattern zero), so decoding is bitwise exact
    (-0.0 stays dense)."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.reshape(-1).view(ints) == 0


def _sparse_encode(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(packed nonzero mask, nonzero values) if that is smaller than the dense tensor, else None."""
    if not tensor.is_floating_point() or tensor.numel() < 64:
        return None
    nonzero = ~_zero_mask(tensor)
    count = int(nonzero.sum())
    dense = tensor.numel() * tensor.element_size()
    if math.ceil(tensor.numel() / 8) + count * tensor.element_size() + SPARSE_MARGIN >= dense:
        return None
    return pack_bits(nonzero, 1), tensor.reshape(-1)[nonzero].clone()


def _numel(what: str, name: str, shape) -> int:
    """Elements of a shape read from layout.json, after checking it is a list of sizes."""
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"{LAYOUT_FILE}: {what} tensor {name} has a bad shape {shape!r}")
    return math.prod(shape)


def _sparse_decode(name: str, mask: torch.Tensor, values: torch.Tensor, shape: list[int]) -> torch.Tensor:
    numel = _numel("sparse", name, shape)
    try:
        nonzero = unpack_bits(mask, 1, numel).bool()
    except ValueError as exc:
        raise ValueError(f"{WEIGHTS_FILE}: sparse tensor {name}: {exc}") from None
    if int(nonzero.sum()) != values.numel() or values.dim() != 1:
        raise ValueError(
            f"{WEIGHTS_FILE}: sparse tensor {name}: mask has {int(nonzero.sum())} nonzeros, "
            f"values has {values.numel()}"
        )
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[nonzero] = values
    return dense.reshape(shape)


# ----------------------------------------------------------------------------- entropy-coded storage


def _entropy_encode(tensor: torch.Tensor) -> torch.Tensor | None:
    """The uint8 tensor's bytes Huffman-coded if that is smaller, else None."""
    if tensor.dtype != torch.uint8 or tensor.numel() < 64:
        return None
    data = huffman_encode(tensor.numpy().tobytes())
    if len(data) + SPARSE_MARGIN >= tensor.numel():
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _entropy_decode(name: str, data: torch.Tensor, shape: list[int]) -> torch.Tensor:
    numel = _numel("coded", name, shape)
    try:
        raw = huffman_decode(data.numpy().tobytes(), numel)
    except ValueError as exc:
        raise ValueError(f"{WEIGHTS_FILE}: coded tensor {name} {exc}") from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(shape)


# ----------------------------------------------------------------------------- save / load


_PROXIES = {nn.Linear: nn.Linear(1, 1), nn.Embedding: nn.Embedding(1, 1), nn.Conv1d: nn.Conv1d(1, 1, 1)}


def _group_and_kind(model: nn.Module, name: str) -> tuple[str, str]:
    """The layer group (or "other") and module kind that own a state_dict entry, for the size breakdown."""
    path = name.rpartition(".")[0]
    module = model.get_submodule(path)
    kind = getattr(type(module), "layout_kind", None) or _BUILTIN_KIND.get(
        type(module), type(module).__name__
    )
    probe = _PROXIES.get(getattr(module, "float_class", None))
    if probe is None and getattr(type(module), "layout_kind", None):
        probe = _PROXIES[nn.Linear]  # a replacement module with its own weights stands for a Linear
    return family_of(model).layer_group(path, probe or module) or "other", kind


def save_weights(model: nn.Module, folder: str | Path) -> dict:
    """Write speech_lab.safetensors + layout.json into `folder`; returns the byte sizes
    (total, files, groups, kinds)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = _layout_entries(model)
    ties = _find_ties(model)
    state = {k: v for k, v in model.state_dict().items() if k not in ties}
    attrs = {path: dict(m.layout_attrs) for path, m in model.named_modules() if hasattr(m, "layout_attrs")}
    tensors, sparse, coded, stored, seen = {}, {}, {}, {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()  # views of one storage cannot both go into a safetensors file
        seen.add(tensor.untyped_storage().data_ptr())
        path, _, attr = name.rpartition(".")
        wants_coding = attr in getattr(model.get_submodule(path), "coded_buffers", ())
        entropy_coded = _entropy_encode(tensor) if wants_coding else None
        encoded = _sparse_encode(tensor) if entropy_coded is None else None
        if entropy_coded is not None:
            tensors[f"{name}@deflate"] = entropy_coded
            coded[name] = list(tensor.shape)
            stored[name] = entropy_coded.numel()
        elif encoded is not None:
            tensors[f"{name}@mask"], tensors[f"{name}@values"] = encoded
            sparse[name] = list(tensor.shape)
            stored[name] = sum(t.numel() * t.element_size() for t in encoded)
        else:
            tensors[name] = tensor
            stored[name] = tensor.numel() * tensor.element_size()
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    if (folder / LAYOUT_FILE).is_file() and (folder / LEGACY_WEIGHTS_FILE).is_file():
        (folder / LEGACY_WEIGHTS_FILE).unlink()  # an old artifact's weights, overwritten by these
    layout = {
        "format": FORMAT,
        "version": VERSION,
        "modules": entries,
        "attrs": attrs,
        "ties": ties,
        "sparse": sparse,
    }
    if coded:
        layout["coded"] = coded
    layout["checksums"] = {name: _checksum(tensor) for name, tensor in tensors.items()}
    (folder / LAYOUT_FILE).write_text(json.dumps(layout, indent=1))

    files = {f: (folder / f).stat().st_size for f in (WEIGHTS_FILE, LAYOUT_FILE)}
    groups: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for name, size in stored.items():
        group, kind = _group_and_kind(model, name)
        groups[group] = groups.get(group, 0) + size
        kinds[kind] = kinds.get(kind, 0) + size
    return {
        "total": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "files": files,
        "overhead": sum(files.values()) - sum(stored.values()),
        "groups": groups,
        "kinds": kinds,
        "sparse_tensors": len(sparse),
        "coded_tensors": len(coded),
    }


def _checksum(tensor: torch.Tensor) -> str:
    """A short sha256 of a stored tensor's bytes: a flipped byte anywhere in the weights file is caught on
    load instead of turning into a model that transcribes "!!!!!!"."""
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


def _verify(state: dict[str, torch.Tensor], checksums: dict) -> None:
    """ValueError naming the first stored tensor whose bytes differ from what was saved (artifacts written
    before checksums were recorded have none and load as before)."""
    for name, expected in checksums.items():
        tensor = state.get(name)
        if tensor is not None and _checksum(tensor) != expected:  # a missing one: the strict load names it
            raise ValueError(
                f"{WEIGHTS_FILE}: tensor {name} does not match its checksum: the file was changed or damaged "
                "after it was written; export it again"
            )


def weights_file(folder: str | Path) -> Path:
    """The weights file of a saved folder: speech_lab.safetensors, or model.safetensors in an artifact
    written before the rename (the new name where neither exists)."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file() and (folder / LEGACY_WEIGHTS_FILE).is_file():
        return folder / LEGACY_WEIGHTS_FILE
    return folder / WEIGHTS_FILE


def _read_layout(folder: Path) -> dict:
    path = folder / LAYOUT_FILE
    if not path.is_file() or not weights_file(folder).is_file():
        raise ValueError(f"{folder} is not a saved model: it needs {WEIGHTS_FILE} and {LAYOUT_FILE}")
    try:
        layout = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(layout, dict) or layout.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    if layout.get("version") != VERSION:
        raise ValueError(f"{path} has version {layout.get('version')!r}; this code reads version {VERSION}")
    for key in ("modules", "attrs", "ties", "sparse"):
        if not isinstance(layout.get(key), dict):
            raise ValueError(f"{path}: '{key}' must be an object")
    if not isinstance(layout.setdefault("coded", {}), dict):
        raise ValueError(f"{path}: 'coded' must be an object")
    if not isinstance(layout.setdefault("checksums", {}), dict):
        raise ValueError(f"{path}: 'checksums' must be an object")
    if not all(isinstance(v, str) for v in layout["ties"].values()):
        raise ValueError(f"{path}: 'ties' must map tensor names to tensor names")
    if not all(isinstance(v, dict) for v in layout["attrs"].values()):
        raise ValueError(f"{path}: 'attrs' must map module paths to objects")
    return layout


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    try:
        owner = model.get_submodule(parent) if parent else model
        old = owner.get_submodule(child)
    except AttributeError:
        raise ValueError(f"{LAYOUT_FILE}: module {path} does not exist in the model") from None
    module.train(old.training)
    if callable(getattr(module, "adopt", None)):
        module.adopt(old)
    setattr(owner, child, module)


def load_weights(skeleton_model: nn.Module, folder: str | Path) -> nn.Module:
    """Rebuild replaced modules per layout.json in `skeleton_model` (in place), re-tie,
    load the weights strictly."""
    from safetensors.torch import load_file

    folder = Path(folder)
    model = skeleton_model
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise ValueError("load_weights needs a skeleton with real memory: call .to_empty(device='cpu') first")
    layout = _read_layout(folder)
    classes = layer_classes()
    for path, entry in sorted(layout["modules"].items(), key=lambda item: item[0].count(".")):
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            raise ValueError(f"{LAYOUT_FILE}: module {path} has no kind")
        args = {k: v for k, v in entry.items() if k != "kind"}
        try:
            module = _build(entry["kind"], args, classes)
        except KeyError as exc:
            if exc.args == (entry["kind"],):
                known = sorted(set(_BUILTIN) | set(classes))
                raise ValueError(
                    f"{LAYOUT_FILE}: module {path} has unknown kind {entry['kind']!r}; known: {known}"
                ) from None
            raise ValueError(f"{LAYOUT_FILE}: module {path} ({entry['kind']}) lacks {exc}") from None
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"{LAYOUT_FILE}: module {path} ({entry['kind']}) has a bad layout: {exc}"
            ) from None
        _replace(model, path, module)
    for path, values in layout["attrs"].items():
        try:
            owner = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"{LAYOUT_FILE}: attrs for {path}, which does not exist") from None
        for attr, value in values.items():
            scalar = (int, float, str, bool, type(None))
            if (
                attr.startswith("_")
                or not isinstance(getattr(owner, attr, ()), scalar)
                or not isinstance(value, scalar)
            ):
                raise ValueError(
                    f"{LAYOUT_FILE}: attrs may only set existing plain attributes; {path}.{attr} is not one"
                )
            setattr(owner, attr, value)
    for alias, source in layout["ties"].items():
        _tie(model, alias, source)

    weights = weights_file(folder)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise ValueError(f"{weights} is not a readable safetensors file: {exc}") from None
    _verify(state, layout["checksums"])
    for name, shape in layout["sparse"].items():
        mask, values = state.pop(f"{name}@mask", None), state.pop(f"{name}@values", None)
        if mask is None or values is None:
            raise ValueError(f"{WEIGHTS_FILE}: sparse tensor {name} is missing its mask or values")
        state[name] = _sparse_decode(name, mask, values, shape)
    for name, shape in layout["coded"].items():
        data = state.pop(f"{name}@deflate", None)
        if data is None or data.dtype != torch.uint8 or data.dim() != 1:
            raise ValueError(f"{WEIGHTS_FILE}: coded tensor {name} is missing or not a uint8 byte string")
        state[name] = _entropy_decode(name, data, shape)
    expected = model.state_dict()
    for alias, source in layout["ties"].items():
        if alias in expected and source in state:
            state[alias] = state[source]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} {state[k].dtype} (expected {tuple(v.shape)} {v.dtype})"
        for k, v in expected.items()
        if k in state and (state[k].shape != v.shape or state[k].dtype != v.dtype)
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{weights} does not match {LAYOUT_FILE} and the model: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape/dtype {wrong[:3]}"
        )
    model.load_state_dict(state, strict=True)  # quantized modules refresh their caches in a post-hook
    aliased = {alias.rpartition(".")[0] for alias in layout["ties"]}
    for path in aliased:  # caches built from a tied tensor: rebuild now that every tensor is loaded
        module = model.get_submodule(path)
        if callable(getattr(module, "refresh", None)):
            module.refresh()
    return model
