"""hscc_core: the engine of hscc-explorer.

Hierarchical Spatio-Channel Clustering (HSCC) compression of CNN classifiers for brain-tumour MRI
(Vacavant et al. 2026, arXiv 2604.23375), its baselines (Global SVD, Tucker-2), data, training,
measurement and the run store. This package never imports Streamlit.
"""

__version__ = "0.1.0"
