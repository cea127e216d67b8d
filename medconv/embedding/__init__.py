"""Tile features per slide for MIL: encoders (timm, SSL exports, medconv runs), `medconv embed`, feature files."""
