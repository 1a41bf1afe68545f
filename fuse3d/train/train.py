"""Train a small TRELLIS-architecture model on procedural part-labelled objects.

    python -m fuse3d.train.pretrain --work ENC                       # 1. the condition encoder
    python -m fuse3d.train.train --work DIR --encoder ENC/encoder    # 2. everything else, in chunks
    python -m fuse3d.train.train --work DIR --encoder ENC/encoder --minutes 0 --export MODEL

The networks are those of an :class:`~fuse3d.trellis.architectures.Architecture` (``--architecture
small``: the classes of TRELLIS-image-large at small width). The condition encoder comes
pre-trained (:mod:`fuse3d.train.pretrain`) and stays **frozen**, as TRELLIS freezes DINOv2: its
tokens of every training image are computed once per chunk. Training runs in time-boxed chunks
(``--minutes`` of wall time each, building the data included: training starts on the first objects
built, and the rest join the batches as worker processes finish them) that checkpoint to ``DIR/ckpt``
(safetensors in fp16 + ``state.json``; optimiser moments are not kept, so a resumed chunk warms its
learning rate up again) and resume from it, in two phases that split ``--total-minutes``:

1. **autoencoders** (the first ``--vae-share``): the sparse-structure VAE on 64³ surface occupancy
   (BCE + soft Dice); the structured-latent encoder on per-voxel colour + normal with two decoders:
   Gaussians (colour, scale, opacity) and the mesh decoder (exact signed distances and colours at the
   cube corners of the 4× finer voxels, from the procedural shapes).
2. **flows** (the rest): the structure flow and the latent flow (``--flows``) with rectified-flow
   losses (logit-normal times of mean ``--time-mean``, 1 as TRELLIS trains) on the frozen autoencoders' latents,
   conditioned on the frozen tokens (10 % of conditions dropped to zeros, for classifier-free
   guidance). An exponential moving average of each flow is what gets exported.

``--decoder-minutes`` adds a phase between the two, outside ``--total-minutes``: the structured-latent
decoders (Gaussians, mesh) fine-tuned on the frozen encoder's posterior means, which are what the
flows produce. The latent space does not move, so trained flows stay valid; a later chunk may add it.
``--views 0`` builds objects without condition images (enough for the autoencoders and the decoders).

One :meth:`Trainer.step` serves every phase: losses of a batch, backward, gradients clipped per
network, the optimiser, the EMA. No loss ever touches an attention map: alignment must emerge from
denoising, as in TRELLIS.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..bundled import SMALL_MODEL_NAME
from ..trellis.architectures import ARCHITECTURES, Architecture
from ..trellis.checkpoint import load_network, read_json, read_safetensors, save_network, write_json, write_safetensors
from ..trellis.pipeline import write_pipeline
from ..trellis.sparse import dense_convolutions
from .config import REQUIRED, option, parse, save_config
from .data import ObjectSample, ObjectStream
from .losses import (SIGMA_MIN, FlowData, condition_dropout, decoder_losses, latent_flow_loss, latent_normalization,
                     rescale_structure_latent, sample_times, structure_flow_loss, vae_losses)

VAE_NETS = ("ss_encoder", "ss_decoder", "slat_encoder", "slat_decoder_gs", "slat_decoder_mesh")
FLOW_NETS = ("ss_flow", "slat_flow")  # exported as their EMA
DECODER_NETS = {"gs": "slat_decoder_gs", "mesh": "slat_decoder_mesh"}  # fine-tuned alone on the frozen encoder's latents
PHASES = ("vae", "decoders", "flow")
CKPT_GROUPS = {"vae": VAE_NETS, "flows": FLOW_NETS}
FIRST_OBJECTS = 64  # a chunk starts training once this many of its objects are built; the rest stream in
NORMALIZATION_OBJECTS = 256  # objects that set the latents' scales at the end of the autoencoder phase


@dataclass
class TrainConfig:
    work: str = option(REQUIRED, "working folder (checkpoint in WORK/ckpt)")
    encoder: Optional[str] = option(None, "the pre-trained condition encoder, a ckpts prefix (PREFIX.json + PREFIX.safetensors); "
                                          "the flow phase needs it, the autoencoder phase reads none")
    architecture: str = option("small", f"network widths: {', '.join(ARCHITECTURES)}")
    minutes: float = option(9.0, "wall time of this chunk, building the data included (0: only --export)")
    total_minutes: float = option(60.0, "planned training time over all chunks (the cosine schedules)")
    vae_share: float = option(0.25, "share of the total spent on the autoencoders")
    decoder_minutes: float = option(0.0, "training time, over all chunks, of the decoders' fine-tuning on the frozen "
                                         "encoder's latents (after the autoencoders, before the flows; not part of "
                                         "--total-minutes)")
    decoders: str = option("gs,mesh", "which decoders the decoder phase fine-tunes: gs, mesh or both")
    objects: int = option(3600, "procedural objects this chunk builds and trains on (seeds from --seed-base)")
    views: int = option(3, "condition images per object (0: none; the flow phase then does not run)")
    render_size: int = option(640, "render size of the condition images (before TRELLIS's crop)")
    seed: int = option(0, "seed of the initialisation and the batch order")
    seed_base: int = option(100000, "this chunk's first object seed (evaluation and probes use others); chunks may "
                                    "take new seeds, and the checkpoint records every seed trained on")
    workers: int = option(max(1, (os.cpu_count() or 2) - 1), "processes that build the data")
    data_cache: Optional[str] = option(None, "folder that keeps the built objects between chunks")
    vae_batch: int = option(4, "objects per autoencoder step")
    flow_batch: int = option(24, "latent-flow batch")
    ss_batch: int = option(96, "structure-flow batch (its steps are cheap next to the latent flow's)")
    lr: float = option(3e-4, "peak learning rate (AdamW)")
    flows: str = option("ss,slat", "which flows the flow phase trains: ss, slat or both")
    time_mean: float = option(1.0, "mean of the flows' logit-normal training times (1: TRELLIS's setting, most times at "
                                   "high noise; lower trains the low noise that places fine shape more)")
    bf16: bool = option(True, "bfloat16 autocast for the flows on CUDA (the sparse convolutions' sparse path stays "
                              "float32; a CPU runs float32, where bfloat16 3D convolutions are about 100x slower)")
    dense_conv: bool = option(True, "train the latent flow's 64³ convolutions through a dense grid (exact, faster on a GPU)")
    export: Optional[str] = option(None, "write the TRELLIS-format model folder here at the end")
    copy_to: Optional[str] = option(None, "at the end, also copy into this folder what the chunk changed: state.json, "
                                          "the EMA of each flow it trained and each autoencoder or decoder it "
                                          "trained (a resume from those files restarts the flows from their EMA)")

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose from {sorted(ARCHITECTURES)}")
        bad = set(self.flow_names) - {"ss", "slat"}
        if bad or not self.flow_names:
            raise ValueError(f"--flows takes ss, slat or ss,slat; got {self.flows!r}")
        if set(self.decoder_names) - set(DECODER_NETS) or not self.decoder_names:
            raise ValueError(f"--decoders takes gs, mesh or gs,mesh; got {self.decoders!r}")

    @property
    def flow_names(self) -> List[str]:
        return [f for f in self.flows.split(",") if f]

    @property
    def decoder_names(self) -> List[str]:
        return [d for d in self.decoders.split(",") if d]


@dataclass
class TrainState:
    """What a checkpoint records besides weights (``state.json``)."""

    architecture: str
    encoder: Optional[str]  # sha256 of the frozen encoder's weights (None until a chunk had one): no resuming with another
    objects: int  # distinct objects trained on, over all chunks (those of ``seeds``)
    steps: Dict[str, int] = field(default_factory=lambda: {p: 0 for p in PHASES})
    seconds: Dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    slat_normalization: Optional[dict] = None
    structure_latent_scale: Optional[List[float]] = None
    log: List[dict] = field(default_factory=list)
    seeds: Optional[List[List[int]]] = None  # the seeds trained on, as ``[first, end)`` ranges
    # the steps each flow took: ``steps["flow"]`` counts the flow phase's, and a chunk with ``--flows ss``
    # (or ``slat``) trains one flow of the two
    flow_steps: Dict[str, int] = field(default_factory=lambda: {n: 0 for n in FLOW_NETS})


def seed_ranges(seeds) -> List[List[int]]:
    """``[first, end)`` ranges that cover exactly the integers ``seeds`` (sorted, merged)."""
    out: List[List[int]] = []
    for s in sorted(set(seeds)):
        if out and out[-1][1] == s:
            out[-1][1] += 1
        else:
            out.append([s, s + 1])
    return out


def seeds_in(ranges: List[List[int]]) -> List[int]:
    return [s for a, b in ranges for s in range(a, b)]


# ============================================================================ checkpoint files
def group_file(group: str, network: str) -> str:
    """The file of one network of a checkpoint group, as :meth:`Trainer.save` writes it."""
    return f"{group}.{network}.safetensors"


def checkpoint_group_files(folder: Path, group: str) -> List[Path]:
    """A checkpoint group's files in ``folder``: split by network (``GROUP.NET.safetensors``, what
    :meth:`Trainer.save` writes) or, from an older trainer, whole (``GROUP.safetensors``). Both at once
    means one is stale, and which one cannot be told from the files: refused."""
    whole = Path(folder) / f"{group}.safetensors"
    split = sorted(Path(folder).glob(f"{group}.*.safetensors"))
    if whole.is_file() and split:
        raise ValueError(f"{folder} holds {whole.name} and {', '.join(f.name for f in split)}: one of them is "
                         f"stale; keep the files of the chunk that wrote state.json")
    return [whole] if whole.is_file() else split


def load_group(folder: Path, group: str, modules: Dict[str, torch.nn.Module]) -> None:
    """Load ``modules`` (by network name) from a checkpoint group's files (keys ``NET.param``)."""
    tensors = {k: v for f in checkpoint_group_files(folder, group) for k, v in read_safetensors(f).items()}
    for n, m in modules.items():
        m.load_state_dict({k[len(n) + 1:]: v for k, v in tensors.items() if k.startswith(n + ".")})


def load_checkpoint_networks(folder: Path, names: List[str], device: str = "cpu") -> Dict[str, torch.nn.Module]:
    """Networks ``names`` of a checkpoint folder's autoencoder group (``vae``), built by the
    architecture its ``state.json`` names, in eval mode (a trainer is not needed to read them)."""
    arch = ARCHITECTURES[read_json(Path(folder) / "state.json")["architecture"]]
    nets = {n: arch.build(n, device) for n in names}
    load_group(folder, "vae", nets)
    return {n: net.eval() for n, net in nets.items()}


# ============================================================================ schedules
def lr_at(step: int, progress: float, base: float, warmup: int = 200) -> float:
    """Linear warm-up over ``warmup`` steps (of this chunk), then cosine decay to 10 % over the phase's
    planned time (``progress`` ∈ [0, 1])."""
    decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return base * min(1.0, (step + 1) / warmup) * decay


@torch.no_grad()
def ema_update(ema: Dict[str, torch.nn.Module], nets, step: int, decay: float = 0.999, names=None) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for n in names or ema:
        torch._foreach_lerp_(list(ema[n].parameters()), list(nets[n].parameters()), 1 - d)


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode() + v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ============================================================================ the trainer
class Trainer:
    """The networks, the frozen encoder, the EMA of the flows, the data and the state of one run.

    ``Trainer(config).run()`` is one chunk; ``python -m fuse3d.train.train`` calls it.
    """

    def __init__(self, config: TrainConfig, device: Optional[str] = None):
        self.config = config
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.arch: Architecture = ARCHITECTURES[config.architecture]
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.nets = {n: self.arch.build(n, self.device).train() for n in VAE_NETS + FLOW_NETS}
        if config.export and config.encoder is None:
            raise ValueError("--export needs the --encoder the flows were trained with")
        self.encoder = None
        if config.encoder is not None:
            self.encoder = load_network(config.encoder, device=self.device, dtype="fp32").eval().requires_grad_(False)
            if self.encoder.width != self.arch.width:
                raise ValueError(f"the encoder {config.encoder} has width {self.encoder.width}; the {self.arch.name} "
                                 f"architecture's flows read {self.arch.width}")
        self.ema = {n: copy.deepcopy(self.nets[n]).requires_grad_(False) for n in FLOW_NETS}
        digest = None if self.encoder is None else weights_digest(self.encoder)
        self.state = TrainState(self.arch.name, digest, 0)
        self.data: List[ObjectSample] = []
        self.flow_data: Optional[FlowData] = None
        self.stream: Optional[ObjectStream] = None
        self._trained_seeds: List[List[int]] = []  # the checkpoint's, before this chunk
        self._started = time.time()
        self._saved = time.time()
        self._changed: set = set()  # networks whose weights this chunk changed

    @property
    def ckpt(self) -> Path:
        return Path(self.config.work) / "ckpt"

    def autocast(self):
        on_cuda = str(self.device).startswith("cuda")
        return torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16, enabled=self.config.bf16 and on_cuda)

    # ------------------------------------------------------------------ losses of a batch
    def autoencoder_losses(self, idx: np.ndarray) -> Dict[str, torch.Tensor]:
        return vae_losses(self.nets, [self.data[i] for i in idx[:self.config.vae_batch]], self.device)

    def decoder_losses(self, idx: np.ndarray) -> Dict[str, torch.Tensor]:
        return decoder_losses(self.nets, [self.data[i] for i in idx[:self.config.vae_batch]], self.device,
                              self.config.decoder_names)

    def flow_losses(self, idx: np.ndarray) -> Dict[str, torch.Tensor]:
        """The structure flow on all objects ``idx``; the latent flow, whose sparse attention
        dominates a step, on the first ``flow_batch``."""
        n_slat = self.config.flow_batch
        x0_ss, tokens, x0_slat = self.flow_data.batch(idx, self.rng, n_slat)
        cond = condition_dropout(tokens)
        t = sample_times(len(idx), self.device, self.config.time_mean)
        out = {}
        with self.autocast(), dense_convolutions(self.nets["slat_flow"], self.config.dense_conv):
            if "ss" in self.config.flow_names:
                out["ss_flow"] = structure_flow_loss(self.nets["ss_flow"], x0_ss, t, cond)
            if "slat" in self.config.flow_names:
                out["slat_flow"] = latent_flow_loss(self.nets["slat_flow"], x0_slat, t[:n_slat], cond[:n_slat])
        return out

    # ------------------------------------------------------------------ one step, both phases
    def step(self, phase: str, opt: torch.optim.Optimizer, groups: List[list], losses_of: Callable,
             lr: float) -> Dict[str, float]:
        """Losses of a random batch, backward, gradients clipped per network, the optimiser, the EMA."""
        t0 = time.time()
        batch = max(self.config.flow_batch, self.config.ss_batch) if phase == "flow" else self.config.vae_batch
        with torch.enable_grad():
            losses = losses_of(self.rng.integers(len(self.data), size=batch))
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
        for g in groups:
            torch.nn.utils.clip_grad_norm_(g, 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        if phase == "flow":
            ema_update(self.ema, self.nets, self.state.steps["flow"], names=self._trained_flows())
            for n in self._trained_flows():
                self.state.flow_steps[n] += 1
        self.state.steps[phase] += 1
        self.state.seconds[phase] += time.time() - t0
        return {k: float(v.detach()) for k, v in losses.items()}

    def _trained_flows(self) -> List[str]:
        return [f"{n}_flow" for n in self.config.flow_names]

    def run_phase(self, phase: str, names, losses_of: Callable, keep_going: Callable[[], bool]) -> None:
        """Optimise ``names`` with :meth:`step` while ``keep_going()``; log and checkpoint."""
        groups = [list(self.nets[n].parameters()) for n in names]
        opt = torch.optim.AdamW([p for g in groups for p in g], lr=self.config.lr, weight_decay=0.0)
        budget = self.phase_budget(phase)
        local = 0
        while keep_going():
            if local % 10 == 0:
                self.grow()
            losses = self.step(phase, opt, groups, losses_of,
                               lr_at(local, self.state.seconds[phase] / budget, self.config.lr))
            local += 1
            steps = self.state.steps[phase]
            if steps % 50 == 0 or local <= 2:
                row = {"phase": phase, "step": steps, "s_per_step": round(self.state.seconds[phase] / steps, 3),
                       "objects": len(self.data), **({"time_mean": self.config.time_mean} if phase == "flow" else {}),
                       **{k: round(v, 4) for k, v in losses.items()}}
                print(row, flush=True)
                if steps % 50 == 0:
                    self.state.log.append(row)
            if time.time() - self._saved > 180:
                self.save()
        if local:
            self._changed.update(names)

    def grow(self, at_least: int = 0) -> None:
        """Take the objects the stream has finished (waiting until there are ``at_least``, or none are
        left to come); they join the batches at once, in both phases."""
        while self.stream is not None:
            new = self.stream.ready(wait=len(self.data) < at_least)
            if new:
                self.data.extend(new)
                if self.flow_data is not None:
                    self.flow_data.add(new)
                if not self.stream.more:
                    print(f"all {len(self.data)} objects in after {time.time() - self._started:.0f} s", flush=True)
            if len(self.data) >= at_least or not self.stream.more:
                return

    def phase_budget(self, phase: str) -> float:
        if phase == "decoders":
            return max(self.config.decoder_minutes * 60, 1.0)
        share = self.config.vae_share if phase == "vae" else 1 - self.config.vae_share
        return max(self.config.total_minutes * 60 * share, 1.0)

    def chunk_left(self) -> bool:
        return time.time() - self._started < self.config.minutes * 60

    # ------------------------------------------------------------------ a chunk
    def run(self) -> None:
        cfg = self.config
        Path(cfg.work).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.work) / "train_config.json")
        if (self.ckpt / "state.json").is_file():
            self.load()
            print(f"resumed from {self.ckpt}: {self.state.steps}", flush=True)
        if cfg.minutes <= 0:
            if cfg.export:
                print("exported", self.export(Path(cfg.export)), flush=True)
            return
        seeds = list(range(cfg.seed_base, cfg.seed_base + cfg.objects))
        self.stream = ObjectStream(seeds, cfg.data_cache, workers=cfg.workers, views=cfg.views,
                                   render_size=cfg.render_size)
        try:
            self.grow(min(cfg.objects, FIRST_OBJECTS))
            print(f"{len(self.data)} of {cfg.objects} objects ready in {time.time() - self._started:.1f} s "
                  "(the rest join while training)", flush=True)
            self.train_chunk()
        finally:
            self.stream.close()
        self.save()
        print(f"saved {self.ckpt}: {self.state.steps}, seconds {self.state.seconds}, {self.state.objects} objects",
              flush=True)
        print("checkpoint files (copy all of them to resume elsewhere):",
              " ".join(sorted(f.name for f in self.ckpt.glob("*.safetensors")) + ["state.json"]), flush=True)
        if cfg.copy_to:
            print("copied to", cfg.copy_to + ":", " ".join(self.copy_changed(Path(cfg.copy_to))), flush=True)
        if cfg.export and self.state.slat_normalization is not None:
            print("exported", self.export(Path(cfg.export)), flush=True)

    def copy_changed(self, folder: Path) -> List[str]:
        """Copy ``state.json`` and the files of the networks this chunk trained into ``folder``; returns
        their names. Enough to bring a kept checkpoint up to date (its flows restart from their EMA)."""
        folder.mkdir(parents=True, exist_ok=True)
        names = sorted(group_file(g, n) for g, modules in self._groups().items() if g != "flows"
                       for n in modules if n in self._changed) + ["state.json"]
        for name in names:
            shutil.copyfile(self.ckpt / name, folder / name)
        return names

    def train_chunk(self) -> None:
        """Both phases, for the rest of this chunk's time."""
        # phase 1: the autoencoders; closed for good once a flow has trained on their latent space, so a
        # longer --total-minutes later extends the flows and never moves the latents under them
        vae_steps = self.state.steps["vae"]
        if self.state.steps["flow"] > 0 and self.state.seconds["vae"] < self.phase_budget("vae"):
            print(f"the autoencoder phase stays closed: the flows trained {self.state.steps['flow']} steps on its "
                  "latent space (the longer schedule goes to the flows)", flush=True)
        else:
            self.run_phase("vae", VAE_NETS, self.autoencoder_losses,
                           lambda: self.state.seconds["vae"] < self.phase_budget("vae") and self.chunk_left())
        if self.state.steps["vae"] != vae_steps:
            self.state.slat_normalization = None  # the latents changed
        if self.state.seconds["vae"] >= self.phase_budget("vae") and self.state.slat_normalization is None:
            self.grow(min(self.config.objects, NORMALIZATION_OBJECTS))
            self.state.structure_latent_scale = rescale_structure_latent(self.nets, self.data[:NORMALIZATION_OBJECTS], self.device)
            self._changed.update({"ss_encoder", "ss_decoder"})
            self.state.slat_normalization = latent_normalization(self.nets, self.data[:NORMALIZATION_OBJECTS], self.device)
            print("structure latent rescaled by", self.state.structure_latent_scale, flush=True)

        # between them: the decoders alone, on the frozen encoder's latents (the latent space stays)
        if self.state.slat_normalization is not None and self.config.decoder_minutes > 0:
            self.nets["slat_encoder"].eval().requires_grad_(False)
            self.run_phase("decoders", [DECODER_NETS[d] for d in self.config.decoder_names], self.decoder_losses,
                           lambda: self.state.seconds["decoders"] < self.phase_budget("decoders") and self.chunk_left())

        # phase 2: the flows, on frozen autoencoders and frozen tokens
        if self.state.slat_normalization is not None and self.config.views == 0:
            print("no condition images (--views 0): the flow phase needs them", flush=True)
        elif self.state.slat_normalization is not None and self.encoder is None:
            print("the autoencoders are trained; the flow phase needs --encoder", flush=True)
        elif self.state.slat_normalization is not None and self.chunk_left():
            for n in VAE_NETS:
                self.nets[n].eval().requires_grad_(False)
            norm = [torch.tensor(self.state.slat_normalization[k], device=self.device) for k in ("mean", "std")]
            t0 = time.time()
            self.flow_data = FlowData(self.nets, self.encoder, self.data, norm, self.device, capacity=self.config.objects)
            print(f"latents and tokens of {len(self.flow_data)} objects in {time.time() - t0:.1f} s", flush=True)
            self.run_phase("flow", self._trained_flows(), self.flow_losses, self.chunk_left)

    # ------------------------------------------------------------------ checkpoints and export
    def _groups(self) -> Dict[str, Dict[str, torch.nn.Module]]:
        """The checkpoint's groups: the autoencoders, the flows and the flows' EMA, by network."""
        return {**{g: {n: self.nets[n] for n in names} for g, names in CKPT_GROUPS.items()}, "ema": self.ema}

    def save(self) -> None:
        """Every network and the flows' EMA in fp16, one file per network (``GROUP.NET.safetensors``;
        the largest, the small latent flow, is 6.5 MB, so each file travels between machines), then
        the state. A chunk always writes this one layout and removes a whole-group file
        (``GROUP.safetensors``) that an older trainer wrote, so the files a chunk updates are the
        ones its checkpoint was loaded from, whatever was copied in."""
        self.ckpt.mkdir(parents=True, exist_ok=True)
        for group, modules in self._groups().items():
            for n, m in modules.items():
                tensors = {f"{n}.{k}": v.half() for k, v in m.state_dict().items()}
                write_safetensors(self.ckpt / group_file(group, n), tensors)
            (self.ckpt / f"{group}.safetensors").unlink(missing_ok=True)
        self.state.seeds = seed_ranges(seeds_in(self._trained_seeds) + [s.seed for s in self.data])
        self.state.objects = len(seeds_in(self.state.seeds))
        write_json(self.ckpt / "state.json", asdict(self.state))
        self._saved = time.time()

    def load(self) -> None:
        """Resume from the checkpoint (each group one file, or split by network, :func:`checkpoint_group_files`).
        Either flow file may be left behind to keep a checkpoint small:
        without the EMA's files the moving averages restart from the loaded flows; without the
        flows' files the flows restart from their moving averages (before any flow step:
        from their initialisation)."""
        raw = read_json(self.ckpt / "state.json")
        state = TrainState(**raw)
        for counter in (state.steps, state.seconds):  # written before the decoder phase existed
            for phase in PHASES:
                counter.setdefault(phase, 0)
        if "flow_steps" not in raw:  # written before --flows existed: every flow step trained both flows
            state.flow_steps = {n: state.steps["flow"] for n in FLOW_NETS}
        if state.architecture != self.arch.name:
            raise ValueError(f"{self.ckpt} holds a {state.architecture!r} model, not {self.arch.name!r}")
        if state.encoder is not None and state.encoder != self.state.encoder:
            given = "no --encoder was given" if self.encoder is None else f"{self.config.encoder} is {self.state.encoder}"
            raise ValueError(f"{self.ckpt} was trained with another condition encoder ({state.encoder}); {given}")
        groups = self._groups()
        if not self._group_files("ema"):
            del groups["ema"]
        flows_from_ema = False
        if not self._group_files("flows"):
            if state.steps["flow"] > 0 and "ema" not in groups:
                raise ValueError(f"{self.ckpt} has neither the flows (flows.*.safetensors) nor their EMA "
                                 f"(ema.*.safetensors) after {state.steps['flow']} flow steps")
            del groups["flows"]  # untrained flows, or trained ones kept only as their moving averages
            flows_from_ema = state.steps["flow"] > 0
        for group, modules in groups.items():
            load_group(self.ckpt, group, modules)
        if "ema" not in groups:
            for n, m in self.ema.items():
                m.load_state_dict(self.nets[n].state_dict())
        if flows_from_ema:
            for n, m in self.ema.items():
                self.nets[n].load_state_dict(m.state_dict())
        state.encoder = self.state.encoder  # an autoencoder-only checkpoint takes the encoder of this chunk
        if state.seeds is None:  # written before the seeds were recorded: chunks read the first seeds onwards
            state.seeds = [[self.config.seed_base, self.config.seed_base + state.objects]]
        self._trained_seeds = state.seeds
        self.state = state

    def _group_files(self, group: str) -> List[Path]:
        return checkpoint_group_files(self.ckpt, group)

    def description(self) -> str:
        encoder = Path(self.config.encoder)
        about = read_json(encoder.with_name(encoder.name + ".pretrain.json")) if encoder.with_name(
            encoder.name + ".pretrain.json").is_file() else None
        enc = (f"a condition encoder pre-trained on {about['views']} renders of {about['objects']} procedural objects "
               f"({about['seeds']}) to expose {', '.join(about['targets'])} per patch, frozen"
               if about else "a frozen pre-trained condition encoder")
        s = self.state
        decoders = f"{s.steps['decoders']} decoder fine-tuning + " if s.steps["decoders"] else ""
        ss, slat = s.flow_steps["ss_flow"], s.flow_steps["slat_flow"]
        flows = f"{ss} flow steps" if ss == slat else f"{ss} structure-flow + {slat} latent-flow steps"
        return (f"small TRELLIS-architecture model trained by fuse3d on procedural part-labelled objects "
                f"({s.objects} objects, {s.steps['vae']} autoencoder + {decoders}{flows}) with {enc}; "
                "it knows only such objects (docs/evaluation.md)")

    def export(self, out: Path) -> Path:
        """Write the trained networks as a TRELLIS-format folder (blocks in fp16, as published); the
        flows are their exponential moving averages, the encoder is the frozen pre-trained one."""
        final = {**self.nets, **self.ema}
        networks = {net.key: (final[n], self.arch.ckpt(n), net.cls, net.args)
                    for n, net in self.arch.exported().items() if n in final}  # e.g. no radiance-field decoder
        params = {"steps": 12, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
        sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": SIGMA_MIN}}
        encoder = copy.deepcopy(self.encoder).eval().half()  # stored in fp16 (loaded back as fp32 on CPU)
        slat_encoder = self.arch.networks["slat_encoder"]  # for encoding a given asset (Fuse3D.edit)
        save_network(self.nets["slat_encoder"], out / "ckpts" / self.arch.ckpt("slat_encoder"), slat_encoder.cls,
                     slat_encoder.args)
        folder = write_pipeline(
            out, networks, (encoder, self.arch.ckpt("image_cond_model")),
            ss_sampler={**sampler, "params": {**params, "cfg_strength": 3.0}},
            slat_sampler={**sampler, "params": {**params, "cfg_strength": 3.0}},
            slat_normalization=self.state.slat_normalization,
            fuse3d_meta={"model_name": SMALL_MODEL_NAME if self.arch.name == "small" else f"fuse3d-{self.arch.name}",
                         "description": self.description(),
                         "slat_encoder": f"ckpts/{self.arch.ckpt('slat_encoder')}", "slat_encoder_input": "color_normal"},
        )
        return folder


def main(argv=None) -> None:
    Trainer(parse(TrainConfig, argv, __doc__)).run()


if __name__ == "__main__":
    main()
