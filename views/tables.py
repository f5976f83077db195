"""Tables that more than one page draws alike: the per-layer table of a run (Explorer, Report)."""

import pandas as pd
import streamlit as st

# Short headers with the long names in their help: with the full names the table was wider than the
# page at 1280 px, and its last column was cut.
_LAYER_COLUMNS = {
    "original MFLOPs": st.column_config.NumberColumn(
        "MFLOPs before", format="%.1f", help="The original layer's FLOPs, in millions (one image)."),
    "compressed MFLOPs": st.column_config.NumberColumn(
        "MFLOPs after", format="%.1f", help="The compressed layer's FLOPs, in millions (one image)."),
    "FLOPs kept %": st.column_config.NumberColumn(
        format="%.1f %%", help="The compressed layer's FLOPs as a share of the original layer's."),
    "clusters used": st.column_config.TextColumn(
        "clusters", help="Channel clusters per region (a range where regions differ)."),
    "ranks kept": st.column_config.TextColumn(
        help="Directions kept over the directions of the original layer's blocks (HSCC: summed over "
             "regions and clusters); 'dense': the layer runs as it was, factorising it would not save FLOPs."),
    "output error": st.column_config.NumberColumn(
        format="%.3f", help="||Y' - Y|| / ||Y||: the compressed layer's output against the original's on 64 "
                            "held-out training images, both fed the original's input. The Heatmaps page "
                            "maps the same error per position on one test image."),
}


def layer_table(rows: list[dict], key: str) -> None:
    """The per-layer rows of :func:`hscc_core.present.report.layer_table`, every row visible."""
    st.dataframe(pd.DataFrame(rows), hide_index=True, key=key, placeholder="n/a", height="content",
                 column_config=_LAYER_COLUMNS)
