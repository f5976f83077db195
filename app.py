"""hscc-explorer: the Streamlit app. Sets the page config and the navigation; pages stay thin.

Serve it on localhost with ``make run`` (``--server.address 127.0.0.1``); see README.md to share it.
"""

from pathlib import Path

import streamlit as st

st.set_page_config(page_title="hscc-explorer", page_icon="🧠", layout="wide")

HERE = Path(__file__).resolve().parent
PAGES = [
    st.Page("pages/overview.py", title="Baseline", icon=":material/home:", default=True),
    st.Page("pages/explorer.py", title="Explorer", icon=":material/tune:"),
    st.Page("pages/pareto.py", title="Pareto", icon=":material/scatter_plot:"),
    st.Page("pages/confusion.py", title="Confusion", icon=":material/grid_on:"),
    st.Page("pages/heatmaps.py", title="Heatmaps", icon=":material/local_fire_department:"),
    st.Page("pages/report.py", title="Report", icon=":material/description:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_rows:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
]
if (HERE / "pages" / "demo.py").is_file():  # the clinician demo page, where it is installed
    PAGES.append(st.Page("pages/demo.py", title="Demo", icon=":material/stethoscope:"))

# Each page draws the shared sidebar itself (pages.common.sidebar), so a page also works when a
# test harness runs it on its own.
st.navigation(PAGES).run()
