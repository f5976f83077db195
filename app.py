"""hscc-explorer: the Streamlit app. Sets the page config, then the navigation and the frame every page
shares (``views/frame.py``); the pages hold widgets and layout only.

Serve it on localhost with ``make run`` (``--server.address 127.0.0.1``); see README.md to share it.
Every page reads ``?run=<cache key>``: a URL opens a given run on a given page.
"""

import sys

import streamlit as st

if __name__ == "__main__":  # Streamlit runs the app as __main__; a process pool's child imports it otherwise
    st.set_page_config(page_title="hscc-explorer", page_icon="🧠", layout="wide")
    starting = st.empty()
    if "views.frame" not in sys.modules:
        # The first request of a server process imports PyTorch and the engine (seconds): say so
        # rather than show a blank page. The frame then says when it loads the model.
        starting.info("Starting hscc-explorer: loading PyTorch and the compression engine...",
                      icon=":material/hourglass_top:")
    from views import frame

    starting.empty()
    frame.app()
