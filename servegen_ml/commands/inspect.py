"""servegen-ml inspect checkpoint=DIR [sample_s=60] [seed=0]

Print what a checkpoint holds (kind, versions, files, clients, learned span, natural rate, the fields
it generates) and check it: loading validates every file (kinds, shapes, dtypes, finiteness, ranges,
agreement between files), then ``sample_s`` seconds are sampled as a final check. Exit 0 when the
checkpoint is sound, 2 with the damaged file and field when it is not.
"""

from __future__ import annotations

import numpy as np

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import checkpoint_digest, load_generator, read_manifest, resolve_checkpoint
from servegen_ml.generators.size import natural_rate_s


def run(cfg) -> int:
    directory = resolve_checkpoint(str(cfg.checkpoint))
    manifest = read_manifest(directory)
    print(f"checkpoint: {directory}")
    print(
        f"generator: {manifest['generator']} (format {manifest.get('format_version', 0)}, "
        f"written by servegen-ml {manifest.get('package_version', '?')})"
    )
    print("files:")
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(directory).as_posix()}: {path.stat().st_size:,} bytes")
    print(f"sha256: {checkpoint_digest(directory)}")
    gen = load_generator(directory)
    print(f"clients: {len(getattr(gen, 'clients', ())):,}")
    natural = natural_rate_s(gen)
    if natural is not None:
        print(f"natural rate: {natural[0]:.3f} req/s (all clients, before conversation follow-ups)")
    print(f"conversations: {'yes' if getattr(gen, 'conversations_', None) is not None else 'no'}")
    print("check: every file read and validated")
    sample_s = float(cfg.sample_s)
    if sample_s > 0:
        spec = GenerationSpec.from_values(duration_s=sample_s, seed=cfg.seed)
        trace = gen.sample(spec, np.random.default_rng(spec.seed))
        fields = ", ".join(trace.columns)
        print(f"check: sampled {sample_s:g} s: {len(trace):,} requests; fields: {fields}")
    print("ok")
    return 0
