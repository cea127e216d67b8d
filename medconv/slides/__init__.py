"""The slide engine every slide command runs on (`medconv infer`, `medconv embed`, `medconv bench infer`).

- `jobs`: INPUT arguments and manifests -> `SlideJob`s
- `data`: per process, its share of the slides, tiled in a background thread (`SlideInferenceData`)
- `stream`: the tiles of the slides tiled so far as one ordered stream of uint8 batches (`SlideStream`)
- `tile_module`: the loader's dataset and the LightningModule that normalises on the device (`TileModule`)
- `outputs`: the writer protocol (`SlideOutputs`), failed rows and summary CSVs
- `predict`: `predict_slides` (Trainer.predict with a per-slide writer thread, DDP: each slide once)
- `loader_workers`, `run_args`: DataLoader workers and the Lightning run arguments of every slide command

What a command writes per slide is its own (`medconv.inference`: scores, heatmaps, GeoJSON; `medconv.embedding`:
feature files); this package imports neither.
"""
