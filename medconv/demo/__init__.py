"""Synthetic data with a known answer: mammograms with lesions, H&E slides with tumour masks, benchmark pyramids.

A leaf: datamodules receive one of these demo sources as their `demo` argument (named by class path in configs)
and never import this package.
"""

from medconv.demo.mil import MILDemo
from medconv.demo.sources import MammoDemo, SlideDemo

__all__ = ["MILDemo", "MammoDemo", "SlideDemo"]
