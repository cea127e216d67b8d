"""Pretrained weights named as timm names them: a tag (`convnext_tiny.fb_in1k`), `hf-hub:org/repo[@revision]`,
`local-dir:/folder`.

timm itself fetches them (`timm.create_model(name, pretrained=True)`), so the Hugging Face cache, HF_HOME,
HF_HUB_OFFLINE and the login token of a gated repository work as they do for any timm user. medconv adds:
a name timm does not know is a ConfigError listing the names it does; weights that cannot be had (offline and not
cached, gated, no such repository, no network) are one PretrainedWeightsError naming the hub id, the cache searched
and the fixes; `locate` says where a name's weights are and whether they are here, without loading or downloading
anything (what `medconv ablate` checks before a sweep starts); `origin` says which file a run started from.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import get_pretrained_cfg, parse_model_name, split_model_name_tag

from medconv.errors import ConfigError, InputFileError, PretrainedWeightsError
from medconv.models.encoder_registry import resolve_model_args

HUB_URL = "https://huggingface.co"
#: what timm loads from a `local-dir:` folder, in its order of preference
LOCAL_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Location:
    """Where the weights of a model name come from and whether they are on this machine already."""

    name: str  # as given
    source: str  # hf-hub | url | file | local-dir
    where: str  # hub id (@revision), URL, file or folder
    present: bool  # in the local cache, or the file exists
    path: str | None = None  # the local weights file when present
    cache: str | None = None  # the cache folder searched

    def describe(self) -> str:
        state = f"in the cache ({self.path})" if self.present and self.cache else "present" if self.present else (
            f"NOT in the cache {self.cache}" if self.cache else "NOT found")
        return f"{self.name}: {self.source} {self.where}, {state}"


def split_source(name: str) -> tuple[str | None, str]:
    """(`hf-hub` | `local-dir` | None, the rest), as timm reads a model name."""
    try:
        return parse_model_name(name)
    except ValueError as err:
        raise ConfigError(f"model name {name!r}: {err}") from err


def check_name(name: str, pretrained: bool = False) -> None:
    """A registry name (with an optional tag) that timm knows; with `pretrained`, one that has weights."""
    source, model_id = split_source(name)
    if source:
        return
    arch, tag = split_model_name_tag(model_id)
    if not timm.is_model(arch):
        raise ConfigError(f"model {arch!r} is not in timm's registry{_close(arch, timm.list_models())} "
                          "(import medconv.models for GResNet).")
    tags = timm.list_pretrained(f"{arch}.*")
    if tag and model_id not in tags:
        raise ConfigError(f"{model_id!r}: timm has no pretrained tag {tag!r} for {arch}; its tags: "
                          f"{', '.join(tags) or 'none'}{_close(model_id, timm.list_pretrained())}")
    if pretrained and not tags:
        raise ConfigError(f"{arch}: timm has no pretrained weights for it (timm.list_pretrained('{arch}.*') is empty); "
                          "start it from a file with pretrained_path, or leave pretrained off.")


def _close(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=6, cutoff=0.6)
    return f"; close names: {', '.join(close)}" if close else ""


def load_pretrained(name: str, model_args: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors timm loads for `name` (its source resolution, cache and offline rules) and their pretrained_cfg.

    timm builds the model headless at the weights' own size and channels, so nothing is adapted yet: adapting them
    to this run's input (and reporting it) is `weights.load_state`'s, the same as for a local file. `model_args`
    (constructor arguments; dotted class names such as `timm.layers.SwiGLUPacked` allowed) build the architecture
    the weights are for where the name alone does not say it (a hub config.json without its class-valued arguments,
    a registry encoder's entry); weights that do not fit it are a ConfigError, not a half-loaded model.
    """
    check_name(name, pretrained=True)
    args = resolve_model_args({k: v for k, v in (model_args or {}).items() if k not in ("num_classes", "in_chans")})
    with hub_errors(name):
        try:
            reference = timm.create_model(name, pretrained=True, num_classes=0, **args)
        except RuntimeError as err:
            if "loading state_dict" not in str(err):
                raise
            detail = " ".join(str(err).split())[:300]
            raise ConfigError(f"{name}: its pretrained weights do not fit the architecture built with model_args "
                              f"{model_args or {}} ({detail}); leave out the arguments that change the architecture, "
                              "or load a local file with pretrained_path (mismatches are then reported).") from err
    return reference.state_dict(), dict(reference.pretrained_cfg)


# --- where the weights are --------------------------------------------------------------------------------------
def locate(name: str) -> Location:
    """Where `name`'s pretrained weights come from and whether they are here; reads no network and loads nothing."""
    check_name(name, pretrained=True)
    source, model_id = split_source(name)
    if source == "local-dir":
        folder = Path(model_id).expanduser()
        file = local_weights_file(folder)
        present = file is not None and (folder / "config.json").is_file()
        return Location(name, "local-dir", str(folder), present, str(file) if file else None)
    if source == "hf-hub":
        config = _cached_file(model_id, "config.json")
        filename = None
        if config is not None:
            filename = (json.loads(Path(config).read_text()).get("pretrained_cfg") or {}).get("hf_hub_filename")
        location = locate_cfg(name, {"source": "hf-hub", "hf_hub_id": model_id, "hf_hub_filename": filename})
        return location if config is not None else Location(name, location.source, location.where, False, None,
                                                            location.cache)
    return locate_cfg(name, get_pretrained_cfg(model_id).to_dict())


def locate_cfg(name: str, cfg: dict) -> Location:
    """Where timm takes the weights of a resolved pretrained_cfg from: the order of timm's own `load_pretrained`."""
    if cfg.get("source") == "local-dir":
        folder = Path(cfg["file"])
        file = local_weights_file(folder)
        return Location(name, "local-dir", str(folder), file is not None, str(file) if file else None)
    if cfg.get("source") != "hf-hub" and cfg.get("file"):
        return Location(name, "file", str(cfg["file"]), Path(cfg["file"]).is_file(), str(cfg["file"]))
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants

        path = _cached_file(cfg["hf_hub_id"], *_weights_names(cfg.get("hf_hub_filename")))
        return Location(name, "hf-hub", cfg["hf_hub_id"], path is not None, path, str(constants.HF_HUB_CACHE))
    if cfg.get("url"):
        cache = Path(torch.hub.get_dir()) / "checkpoints"  # timm's (and torch.hub's) download folder
        path = cache / Path(urlparse(cfg["url"]).path).name
        return Location(name, "url", cfg["url"], path.is_file(), str(path) if path.is_file() else None, str(cache))
    raise ConfigError(f"{name}: its pretrained config names no weights (no hf_hub_id, url or file).")


def local_weights_file(folder: Path) -> Path | None:
    """The weights file timm loads from a `local-dir:` folder."""
    for name in LOCAL_FILES:
        if (folder / name).is_file():
            return folder / name
    for ext in (".safetensors", ".pth", ".pth.tar", ".bin"):
        files = sorted(folder.glob(f"*{ext}"))
        if files:
            return files[0]
    return None


def _weights_names(filename: str | None) -> list[str]:
    """The files timm tries for a hub weights file: its safetensors twin first."""
    filename = filename or "pytorch_model.bin"
    if filename.endswith(".safetensors"):
        return [filename]
    twins = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    twin = twins.get(filename) or (filename[:-4] + ".safetensors" if filename.endswith(".bin") else None)
    return [twin, filename] if twin else [filename]


def _cached_file(hub_id: str, *filenames: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    for filename in filenames:
        path = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(path, str):
            return path
    return None


def origin(name: str, cfg: dict) -> dict:
    """What a run records about the weights it started from: source, hub id or file, tag, commit, sha256."""
    location = locate_cfg(name, cfg)
    record = {"name": name, "source": location.source, "id": location.where}
    if cfg.get("architecture") and cfg.get("tag"):
        record["tag"] = f"{cfg['architecture']}.{cfg['tag']}"
    if location.path:
        record |= {"file": location.path, "sha256": sha256(location.path)}
        parts = Path(location.path).parts
        if "snapshots" in parts[:-1]:
            record["commit"] = parts[parts.index("snapshots") + 1]
    return record


def sha256(path: str | Path) -> str:
    """The file's sha256; a Hugging Face cache blob is named by it already (LFS files), so it is not re-read."""
    blob = Path(path).resolve()
    if _SHA256.match(blob.name):
        return blob.name
    digest = hashlib.sha256()
    with blob.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mean_std(cfg: dict, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The weights' normalisation for `in_chans` channels (RGB statistics averaged for a grey input)."""
    mean, std = cfg.get("mean"), cfg.get("std")
    if not mean or not std:
        return None
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# --- errors ---------------------------------------------------------------------------------------------------------
def hub_id_of(name: str) -> str | None:
    """The Hugging Face repository a model name's weights come from, if any."""
    source, model_id = split_source(name)
    if source == "hf-hub":
        return model_id
    if source is None:
        cfg = get_pretrained_cfg(model_id)
        return cfg.hf_hub_id if cfg is not None else None
    return None


@contextlib.contextmanager
def hub_errors(name: str):
    """Turn what the Hugging Face hub, torch.hub and timm raise into one message that says what to do."""
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.GatedRepoError as err:
        raise PretrainedWeightsError(_message(name, "it is a gated repository and this login has no access to it")) from err
    except hf.RepositoryNotFoundError as err:
        raise PretrainedWeightsError(_message(name, "no such repository on the hub, or a private one this login "
                                              "cannot see")) from err
    except hf.RevisionNotFoundError as err:
        raise PretrainedWeightsError(_message(name, "the repository has no such revision")) from err
    except hf.LocalEntryNotFoundError as err:
        raise PretrainedWeightsError(_message(name, "not in the local cache, and the hub could not be asked "
                                              f"({'offline mode' if offline() else 'no network'})")) from err
    except hf.EntryNotFoundError as err:
        raise PretrainedWeightsError(_message(name, f"the repository has no weights file timm can load ({err})")) from err
    except hf.HfHubHTTPError as err:
        raise PretrainedWeightsError(_message(name, f"the hub answered {str(err).splitlines()[0]}")) from err
    except urllib.error.URLError as err:  # a timm weight that lives at a URL, fetched by torch.hub
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise PretrainedWeightsError(f"{name}: could not download its pretrained weights ({err.reason}); put the file "
                                     f"in {cache}, or pass a local weights file as pretrained_path.") from err
    except FileNotFoundError as err:  # `local-dir:` without config.json
        raise InputFileError(f"{name}: {err}; a local-dir: folder holds config.json and the weights file "
                             "(as timm.models.save_for_hf writes them).") from err


def offline() -> bool:
    from huggingface_hub import constants

    return bool(getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)())


def _message(name: str, reason: str) -> str:
    from huggingface_hub import constants

    hub_id = hub_id_of(name) or name
    repo = hub_id.partition("@")[0]
    return (f"{name}: cannot get the pretrained weights {hub_id}: {reason}. Searched the Hugging Face cache "
            f"{constants.HF_HUB_CACHE} (HF_HUB_OFFLINE={int(offline())}). To fix: if the repository is gated, accept "
            f"its licence on {HUB_URL}/{repo} and log in (`hf auth login`, or `huggingface-cli login`, or set HF_TOKEN); "
            f"pre-download it where there is network with `hf download {repo}` (`huggingface-cli download {repo}`) "
            "into this cache (the same HF_HOME); set HF_HUB_OFFLINE=0 to let timm download it; or pass a local weights "
            "file as pretrained_path.")
