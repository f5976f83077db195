"""hscc-explorer: the Streamlit app. Sets the page config and the navigation; pages stay thin."""

import streamlit as st

st.set_page_config(page_title="hscc-explorer", page_icon="🧠", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Baseline", icon="🏠", default=True),
]

# Each page draws the shared sidebar itself (pages.common.sidebar), so a page also works when a
# test harness runs it on its own.
st.navigation(PAGES).run()
