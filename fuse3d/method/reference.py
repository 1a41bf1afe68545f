"""Fuse3D on one page: the whole method, uncached, top to bottom.

:func:`fuse3d_reference` is what :class:`fuse3d.pipeline.Run` computes, written as one linear
function in the spirit of a diffusers pipeline's ``__call__``. It calls the same method functions
(and ``tests/test_method_reference.py`` checks that a ``Run`` equals it bit for bit on the CPU), but
caches nothing and explains every step with the paper's section and equation. Read it first; read
:mod:`fuse3d.stages` for how the run caches, retunes and shows each step.

It covers the paper's method and its main options (``capture_tokens``, ``capture_strategy``,
``prefix_tokens``, ``sampler``, the λ modes, ``reverse_alignment`` and ``enhancement`` switches). The ablation *w/o MCFM*
(``fusion="crop"``) and the inpainting variant run through :class:`~fuse3d.pipeline.Run` only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from ..trellis.attention import use_attn_processors
from ..trellis.sampler import CallTracker
from . import alignment, capture, enhancement, fusion
from .kernels import EnhanceProcessor
from .presets import preset_sampler
from .seeds import derive_seed


@dataclass
class Reference:
    """Every intermediate of :func:`fuse3d_reference` (locals first, the global image last)."""

    tokens: List[torch.Tensor]           # [1374, C] per condition
    selected: List[torch.Tensor]         # D_k: selected patch indices per condition
    structure: torch.Tensor              # [N, 4] voxels
    cells: torch.Tensor                  # [M, 4] cells (32³), the latent flow's queries
    head_scores: List[torch.Tensor]      # [heads, cells] per local
    reverse_map: torch.Tensor            # [heads, cells, candidates]
    raw_masks: List[torch.Tensor]        # [cells] per local, before the vote
    refined_masks: List[torch.Tensor]    # V_k, [cells] per local
    unaligned: torch.Tensor              # [cells]
    global_patches: torch.Tensor         # D_g
    unified: fusion.UnifiedTokens
    lambdas: List[float]
    final: torch.Tensor                  # [N, 8] the fused structured latent (de-normalised)


@torch.no_grad()
def fuse3d_reference(trellis, global_condition, local_conditions, params, structure: Optional[torch.Tensor] = None,
                     progress: bool = False) -> Reference:
    """Fuse3D for ``local_conditions`` (each with its selected region) and ``global_condition``.

    Args:
        trellis: a loaded :class:`~fuse3d.trellis.pipeline.TrellisPipeline`.
        global_condition, local_conditions: :class:`fuse3d.Condition` objects.
        params: a :class:`fuse3d.params.Fuse3DParams`.
        structure: voxels ``[N, 4]`` to use instead of sampling them from the global image.
    """
    if params.fusion != "mcfm" or params.inpainting:
        raise NotImplementedError("the reference covers the paper's method; run fusion='crop' and inpainting "
                                  "through fuse3d.Fuse3D.run")
    conditions = list(local_conditions) + [global_condition]
    K, prefix = len(local_conditions), trellis.image_encoder.num_prefix_tokens
    latent = preset_sampler(trellis.slat_sampler_params, params.sampler, "latent", params.latent_steps, params.latent_cfg)
    dev = trellis.device

    # 1. Preprocess (§3.1): TRELLIS's crop and resize of every image; each user mask follows the
    #    crop by coverage, and a patch is selected when any of its pixels is.
    prepared = [c.prepare() for c in conditions]

    # 2. MCFM tokens (§3.2, Fig. 3): every image encoded whole — T_k = (CLS, REG₁…REG_r, token₁…);
    #    the selected patches D_k = {i | M_k^d[i // W̃, i mod W̃] = 1}.
    tokens = [trellis.encode_images([pr.image])[0].float().cpu() for pr in prepared]
    selected = [fusion.patch_indices(pr.selected) for pr in prepared]

    # 3. Structure (§3.1): TRELLIS's sparse structure from the global image alone.
    if structure is None:
        structure = trellis.sample_structure(tokens[K][None].to(dev), seed=derive_seed(params.seed, "structure"),
                                             progress=progress, **preset_sampler(trellis.ss_sampler_params,
                                                                                 params.sampler, "structure",
                                                                                 params.structure_steps,
                                                                                 params.structure_cfg)).cpu()
    cells, voxel_cell = alignment.cells_of_voxels(structure)

    # 4. Capture (§3.3): one latent sampling per local image on its full tokens, one with the global
    #    image; cross-attention in every block and step of the conditional pass, summed over D_k
    #    after the softmax over tokens (forward), and kept per candidate token after the softmax over
    #    cells (reverse).
    items = []
    for i, (pr, tok) in enumerate(zip(prepared, tokens)):
        reverse = i == K
        fg = None if reverse or params.capture_tokens == "full" else fusion.patch_indices(pr.foreground)
        fed, target = capture.capture_tokens(tok.shape[0], prefix, selected[i], fg, reverse, params.prefix_tokens)
        seed = derive_seed(params.seed, "capture:global" if reverse else f"capture:{conditions[i].key}")
        items.append(capture.CaptureItem(conditions[i].name, tok[fed], fed, target, seed))
    plan = capture.CapturePlan(structure, len(cells), trellis.slat_flow.num_heads, len(trellis.slat_flow.blocks),
                               items, latent, params.capture_strategy, params.capture_blocks, params.capture_steps,
                               params.capture_detail, params.capture_batch)
    captured = [tensors for tensors, _ in capture.capture(trellis, plan, list(range(K + 1)), progress)]

    # 5. Forward alignment (§3.3): mean over the chosen heads, min–max over cells, threshold → V_k;
    #    then the kNN majority vote fills holes and clears outliers (supplementary).
    raw, refined = [], []
    neighbours = alignment.neighbourhoods(cells[:, 1:], params.refine_k, params.refine_ties)
    for k in range(K):
        _, mask = alignment.forward_alignment(captured[k]["mean"], params.heads, params.threshold)
        raw.append(mask)
        refined.append(alignment.refine(mask, cells[:, 1:], params.refine_k, params.refine_fill, params.refine_clear,
                                        params.refine_ties, neighbours=neighbours) if params.refine else mask.clone())

    # 6. Reverse alignment (§3.3): V_unaligned = {1…L} \ ∪_k V_k; the global image's attention,
    #    normalised over cells, summed over V_unaligned, min–max over tokens, threshold → D_g.
    unaligned = alignment.unaligned_cells(refined, len(cells))
    candidates = captured[K]["fed_tokens"][captured[K]["target_tokens"]] - prefix
    if params.reverse_alignment:
        threshold = params.threshold if params.reverse_threshold is None else params.reverse_threshold
        _, keep = alignment.reverse_alignment(captured[K]["mean"], unaligned, params.heads, threshold)
    else:
        keep = torch.ones(len(candidates), dtype=torch.bool)
    global_patches = candidates[keep]

    # 7. Unified tokens (§3.2) and the enhancement matrix (§3.4): E[i, j] = λ_k for i ∈ V_k and
    #    j ∈ D_k (CLS and registers included), λ_g on V_unaligned × D_g, 1 elsewhere.
    kept = selected[:K] + [global_patches]
    unified = fusion.unify_tokens([fusion.select_tokens(tokens[i], kept[i], prefix, params.prefix_tokens)
                                   for i in range(K + 1)], kept, prefix if params.prefix_tokens else 0)
    foreground = [int(pr.foreground.sum()) for pr in prepared[:K]]
    lambdas = enhancement.run_lambdas(params.strength, params.lambda_mode, [len(s) for s in selected[:K]], foreground,
                                      prepared[0].selected.size, explicit=params.lambdas,
                                      explicit_global=params.global_lambda, global_selected=len(global_patches),
                                      reverse_alignment=params.reverse_alignment)
    tables = (enhancement.enhancement_tables(refined, unaligned, unified.token_region, lambdas) if params.enhancement
              else enhancement.identity_tables(len(cells), unified.token_region))

    # 8. Final sampling (§3.4): fresh noise; in every block, the conditional pass attends with
    #    A_scaled = A ⊙ E on the scaled logits before the softmax.
    coords = structure.to(dev)
    noise = trellis.latent_noise(coords, derive_seed(params.seed, "final"))
    tracker = CallTracker()
    procs = {}
    if params.enhancement:
        proc = EnhanceProcessor(tables.to(dev), tracker, params.enhancement_backend)
        procs = {f"blocks.{b}.cross_attn": proc for b in range(len(trellis.slat_flow.blocks))}
    with use_attn_processors(trellis.slat_flow, procs):
        slat = trellis.sample_latent(unified.tokens[None].to(dev), coords, noise=noise, progress=progress,
                                     call_context=tracker, **latent)
    return Reference(tokens, selected, structure, cells, [c["mean"] for c in captured[:K]], captured[K]["mean"],
                     raw, refined, unaligned, global_patches, unified, tables.lambdas.tolist(), slat.feats.float().cpu())
