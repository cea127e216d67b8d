"""Statistics for small evaluation sets, in plain numpy/scipy so every layer can use them (reports, the ablation,
heatmap quality): AUROC/AP under resampling weights, the patient (cluster) bootstrap, DeLong's test for two
correlated AUROCs, calibration, and intervals that stay inside a metric's range."""
