"""Tiling: pure grid geometry, tissue masks, the per-slide coords store, and `medconv tile`.

Modules: geometry (level choice, grids, mask fractions, coords <-> thumbnail/heatmap), tissue
(masks), coords_store (HDF5 read/write), images (mask/QC PNGs), inputs (INPUT expansion),
slide_tiler (one slide), cli (many slides in parallel).
"""
