"""The weight layout of saved LLaVA / Gemma 3 checkpoints that both runtimes load.

transformers 5.x saves LLaVA's (and LLaVA-NeXT's) CLIP tower and Gemma 3's SigLIP tower as `vision_tower.*`; vLLM
(0.32) loads only the layout of the published LLaVA-1.5 / LLaVA-NeXT / Gemma 3 checkpoints,
`vision_tower.vision_model.*`, and transformers loads both. So every such folder this project writes (training
checkpoints, final models, the test builders) is rewritten in the published layout, and a policy trained in one
iteration can be served by vLLM in the next.
"""

from __future__ import annotations

import json
import os
import pathlib

# model types whose saved vision keys are renamed (verified: transformers 5.19 -> vLLM 0.32)
HUB_LAYOUT_MODEL_TYPES = ("gemma3", "llava", "llava_next")


def hub_layout_key(name: str) -> str:
    """`vision_tower.X` -> `vision_tower.vision_model.X`; every other name (language_model.*,
    multi_modal_projector.*) is returned unchanged, as is a name already in that layout."""
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + name[len("vision_tower.") :]
    return name


def write_hub_layout(folder: str | os.PathLike) -> bool:
    """Rewrite the safetensors file(s) of a saved model folder in the published layout when its config.json names a
    model type that needs it; returns whether anything was rewritten."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = pathlib.Path(folder)
    config = folder / "config.json"
    if not config.exists() or json.loads(config.read_text()).get("model_type") not in HUB_LAYOUT_MODEL_TYPES:
        return False
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors file in {folder}")
    changed = False
    for f in files:
        with safe_open(str(f), "pt") as sf:
            keys = list(sf.keys())
            if all(hub_layout_key(k) == k for k in keys):
                continue
            metadata = sf.metadata() or {"format": "pt"}
            tensors = {hub_layout_key(k): sf.get_tensor(k) for k in keys}
        tmp = f.with_name(f.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, f)
        changed = True
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {hub_layout_key(k): v for k, v in data.get("weight_map", {}).items()}
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return changed


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_folder(path: str | os.PathLike, *, local_files_only: bool = True,
                       allow_pickle_weights: bool = False) -> None:
    """Fail early and clearly on a model folder that is not there (instead of the hub client's "Repo id must use
    alphanumeric chars" or "check your internet connection"), and on one whose weights are pickle files only:
    unpickling can run code, so those load only when the user vouches for the folder."""
    p = pathlib.Path(path)
    if not p.exists():
        if local_files_only:
            raise FileNotFoundError(f"model folder {os.fspath(path)} does not exist (a hub model downloads only with "
                                    "the engine option local_files_only=false)")
        return  # a hub name, downloaded by the user's choice
    if not p.is_dir():
        raise NotADirectoryError(f"model path {os.fspath(path)} is a file; give the model's folder")
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{os.fspath(path)} is not a model folder: config.json is missing")
    if any(p.glob("*.safetensors")):
        return
    pickles = sorted(f.name for pattern in PICKLE_WEIGHTS for f in p.glob(pattern))
    if pickles and not allow_pickle_weights:
        raise ValueError(
            f"{os.fspath(path)} holds only pickle weights ({', '.join(pickles[:3])}); loading a pickle can run code. "
            "Convert them to safetensors, or, for a folder you trust, pass the engine option "
            "allow_pickle_weights=true"
        )
