"""Synthetic data with a known answer: mammograms with lesions, H&E slides with tumour masks, benchmark pyramids."""
