"""`splatkit view`: a browser viewer built on viser.

Layering: the viewer is the top layer. It imports data/model/render/train/io; only `splatkit.cli` and the
trainer's `--viewer` hook (lazily) import it. Modules:

- `config`: the `ViewConfig` CLI dataclass.
- `camera`: viser pose <-> `Camera` conversion, framing a model, the scene's up direction.
- `pacing`: the resolution chooser, the "newest pose wins" slot, the render-share limiter.
- `source`: where Gaussians come from (a .ply, a run folder, a live trainer) and their snapshots.
- `session`: one browser tab: its GUI, its render worker, its splats.
- `app`: the server: port checks, connect/disconnect, `run_view` and the live-training hook.
"""
