"""Tile features per slide for MIL: encoders (timm, SSL exports, medconv runs) and `medconv embed`, a writer and
front end on the slide engine (`medconv.slides`). The feature files it writes are `medconv.tiling.feature_store`."""
