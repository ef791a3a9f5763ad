"""Orion (``orion-fhe``, Lattigo inside): one of its own MNIST networks with given weights,
per-image packing, one image at a time — the workflow of Orion's own examples, no hecnn code.

Runs in its own environment (Orion pins scipy ≤ 1.14.1 and wants torchvision), so this file
imports only the standard library, numpy, torch and orion. Usage::

    python orion_runner.py NET.npz OUT.npz RESULT.json

``NET.npz`` holds ``model`` (``"lola"`` or ``"lenet"``: ``orion.models.LoLA`` / ``LeNet``),
``images`` (K × 1 × 28 × 28, the images to classify encrypted), ``fit_images`` (the clear
images Orion's ``fit`` reads to record activation ranges) and one array per ``state_dict``
entry under ``sd.<name>``. ``OUT.npz`` gets the decrypted ``logits`` (K × classes);
``RESULT.json`` the CKKS parameters, the compile time (packing, level assignment, keys), the
latency of every image and the peak resident memory.

The CKKS parameters are the ones Orion's repository ships for these networks
(``configs/lola.yaml``, ``configs/lenet.yaml``): 128-bit secure, LogN 13 and 14.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

#: debug off: Orion's debug mode decrypts every layer's input and output to print ranges
ORION_OPTIONS = {"margin": 2, "embedding_method": "hybrid", "io_mode": "none", "debug": False}
CONFIGS = {
    "lola": {
        "ckks_params": {
            "LogN": 13,
            "LogQ": [29, 26, 26, 26, 26, 26],
            "LogP": [29, 29],
            "LogScale": 26,
            "H": 8192,
            "RingType": "ConjugateInvariant",
        },
        "orion": ORION_OPTIONS,
    },
    "lenet": {
        "ckks_params": {
            "LogN": 14,
            "LogQ": [45, 35, 35, 35, 35, 35, 35, 35],
            "LogP": [45, 45],
            "LogScale": 35,
            "RingType": "ConjugateInvariant",
        },
        "orion": ORION_OPTIONS,
    },
}


def _peak_rss() -> int:
    """Peak resident bytes of this process: ``VmHWM`` (per address space). Not ``ru_maxrss``:
    Linux carries the parent's high-water mark across fork + exec into it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu() -> float:
    """CPU seconds of this process, all threads (Go's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(net_path: str, out_path: str, result_path: str) -> None:
    import orion
    import orion.models as models

    net_file = np.load(net_path, allow_pickle=False)
    which = str(net_file["model"])
    if which not in CONFIGS:
        raise SystemExit(f"unknown model {which!r}; choose from {sorted(CONFIGS)}")
    images = torch.as_tensor(net_file["images"], dtype=torch.float32)
    fit_images = torch.as_tensor(net_file["fit_images"], dtype=torch.float32)
    state = {
        k.removeprefix("sd."): torch.as_tensor(net_file[k])
        for k in net_file.files
        if k[:3] == "sd."
    }
    stages = {}

    t0 = time.perf_counter()
    orion.init_scheme(CONFIGS[which])
    net = models.LoLA() if which == "lola" else models.LeNet()
    net.load_state_dict(state, strict=True)
    net.eval()
    with torch.no_grad():
        clear = net(images).double().numpy()
    # a DataLoader of batch size 1, as in Orion's examples: fit reads it in large batches, then
    # sets the network's batch back to 1 (a bare tensor would fix the packed batch to its length)
    loader = DataLoader(TensorDataset(fit_images, torch.zeros(len(fit_images))), batch_size=1)
    orion.fit(net, loader)
    input_level = orion.compile(net)
    stages["compile"] = time.perf_counter() - t0

    net.he()
    logits, latency, encrypt_s, cpu = [], [], [], []
    for k in range(len(images)):
        t0 = time.perf_counter()
        ct = orion.encrypt(orion.encode(images[k : k + 1], input_level))
        encrypt_s.append(time.perf_counter() - t0)
        t0, cpu0 = time.perf_counter(), _cpu()
        out = net(ct)
        latency.append(time.perf_counter() - t0)
        cpu.append(_cpu() - cpu0)
        logits.append(np.asarray(out.decrypt().decode(), dtype=np.float64).reshape(-1))
    np.savez(out_path, logits=np.stack(logits), clear=clear)
    p = CONFIGS[which]["ckks_params"]
    result = {
        "system": "orion",
        "model": which,
        "log_n": p["LogN"],
        "log_q": p["LogQ"],
        "log_p": p["LogP"],
        "log_scale": p["LogScale"],
        "images": len(images),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
        "stages": stages,
        "encrypt_s": encrypt_s,
        "latency_s": latency,
        "latency_cpu_s": cpu,
        "peak_rss": _peak_rss(),
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
