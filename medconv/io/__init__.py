"""Readers: slides (OpenSlide + a fast TIFF path behind one interface) and mammograms (DICOM/PNG/PGM)."""
