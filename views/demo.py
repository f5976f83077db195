"""Clinician demo page: one MRI slice in (a test slice or an upload), both models' answers out.

For the original model and a compressed run side by side: the answer and its probability, the four
class probabilities, Grad-CAM over the slice (where each model looked for its own answer), the time
of this one inference, and one sentence on what the compression saved and whether the answers agree.
Laid out for screens from 1280 px wide (answers wrap instead of being cut; class names sit above their
bars) up to a 1920 x 1080 projector without scrolling, in large type and Okabe-Ito colours.

Uploads stay in memory (Streamlit's upload buffer and this session's state); they are decoded by
``hscc_core.data.imageio.load_slice`` from bytes, never written to disk, never unpickled, and their names are
only shown back. All computation is in ``hscc_core.present.predict``.
"""

import hashlib
import html

import streamlit as st

from hscc_core.data.imageio import MAX_BYTES, SliceError, load_slice
from hscc_core.measure.machine import BUSY_SHARE
from hscc_core.present.labels import class_label
from hscc_core.present.plots import METHOD_STYLE, OKABE_ITO, overlay_figure
from hscc_core.present.predict import compare, fine_tuned_refusal, probability_figure
from hscc_core.present.text import plain
from hscc_core.runs.config import run_name
from views.frame import NOTICE, chart, compressed_model, run_picker, show, workspace_id

SOURCES = ("Test slice", "Upload a file")
HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
RESULT = "demo_result"  # session key: (token, result) of the last comparison, so widgets do not recompute
UPLOAD_TOKEN = "demo_upload_token"
CAM_SIZE = 300  # px: the Grad-CAM map's width (and the probability chart's height)
PROBS_WIDTH = 330
ANSWER_WIDTH = 320
PHANTOM_WARNING = ("This model was trained on the synthetic MRI phantom only: it has never seen a real scan. "
                   "Its answer for an uploaded image means nothing clinically, whatever its confidence.")

# Projector-friendly type: larger body text, answers and alerts; a tighter top margin so the whole
# page fits 1080 px. Static CSS written here (no user content in it).
STYLE = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 2.2rem; padding-bottom: 1rem; }
[data-testid="stMain"] [data-testid="stMarkdownContainer"] p { font-size: 1.15rem; }
[data-testid="stMain"] [data-testid="stMetricValue"],
[data-testid="stMain"] [data-testid="stMetricValue"] p { font-size: 2.2rem; line-height: 1.25; }
[data-testid="stMain"] [data-testid="stMetricLabel"] p { font-size: 1.05rem; }
[data-testid="stMain"] h1 { font-size: 2.2rem; padding-bottom: 0.2rem; }
.demo-answer { font-size: 2rem; font-weight: 600; line-height: 1.2; white-space: normal; overflow-wrap: anywhere;
               margin-bottom: 0.3rem; }
.demo-label { font-size: 1rem; opacity: 0.75; margin-bottom: 0.1rem; }
.demo-time { font-size: 1.4rem; font-weight: 600; line-height: 1.2; }
</style>"""


def pick_test_slice(ctx):
    """Select box of the test split; returns (uint8 slice, token, caption, class name) or None."""
    images = ctx.ws.images()
    classes = list(images.classes)
    n = len(images.y_test)
    index = st.selectbox("Test slice", range(n), key="demo_index",
                         format_func=lambda i: f"#{i} · labelled {class_label(classes[images.y_test[i]])}")
    if index is None:
        return None
    name = images.test_paths[index] if index < len(images.test_paths) else f"#{index}"
    label = classes[images.y_test[index]]
    return (images.x_test[index], f"test:{index}",
            f"Test slice #{index} ({plain(name)}), labelled **{plain(class_label(label))}**.", label)


def uploaded_slice():
    """File uploader plus frame/window controls; returns (LoadedSlice, token, caption, None) or None (an
    upload has no known class)."""
    up = st.file_uploader(f"One slice: PNG, JPEG, TIFF or DICOM, up to {MAX_BYTES // 2**20} MB",
                          key="demo_upload", max_upload_size=MAX_BYTES // 2**20,
                          help="The format is found from the content (DICOM files often have no extension). "
                               "The file stays in memory and is discarded with the session.")
    if up is None:
        st.session_state.pop(UPLOAD_TOKEN, None)
        return None
    data = up.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    if st.session_state.get(UPLOAD_TOKEN) != digest:
        # A new file: the previous file's frame and window do not apply to it.
        for key in ("demo_frame", "demo_manual_window", "demo_center", "demo_width"):
            st.session_state.pop(key, None)
        st.session_state[UPLOAD_TOKEN] = digest
    frame = st.session_state.get("demo_frame")
    window = None
    if st.session_state.get("demo_manual_window") and st.session_state.get("demo_width", 0) > 0:
        window = (st.session_state["demo_center"], st.session_state["demo_width"])
    try:
        loaded = load_slice(data, up.name, frame=frame, window=window)
    except SliceError as exc:
        st.error(f"Cannot use this file: {plain(exc)}")
        return None
    meta = loaded.meta
    if meta.get("frames", 1) > 1 or meta.get("format") == "DICOM" or meta.get("mode") in HIGH_DEPTH:
        display_controls(loaded)
    bits = [meta.get("format", "image"), f"{meta.get('width')} x {meta.get('height')} px"]
    if meta.get("frames", 1) > 1:
        bits.append(f"frame {meta['frame']} of {meta['frames']}")
    if meta.get("modality"):
        bits.insert(1, meta["modality"])
    caption = f"Uploaded: {plain(', '.join(str(b) for b in bits))}."  # the file's own strings: text
    token = f"upload:{digest}:{meta.get('frame')}:{window}"
    return loaded, token, caption, None


def display_controls(loaded) -> None:
    """Frame and manual window of a multi-frame, DICOM or high-bit-depth upload, in a popover."""
    meta = loaded.meta
    with st.popover("Frame and window", width="stretch"):
        if meta.get("frames", 1) > 1:
            st.session_state.setdefault("demo_frame", int(meta["frame"]))
            st.number_input(f"Frame (1 to {meta['frames']})", min_value=1, max_value=int(meta["frames"]), step=1,
                            key="demo_frame")
        current = meta.get("window") or {}
        lo, hi = (meta.get("value_range") or [0.0, 255.0])[:2]
        st.session_state.setdefault("demo_center", float(current.get("center", (lo + hi) / 2)))
        st.session_state.setdefault("demo_width", float(max(current.get("width", hi - lo), 1.0)))
        st.checkbox("Manual window", key="demo_manual_window",
                    help="Off: the file's own window (DICOM Window Center/Width), else its full range.")
        c = st.columns(2)
        c[0].number_input("Centre", key="demo_center", step=10.0, format="%.1f")
        c[1].number_input("Width", key="demo_width", min_value=1.0, step=10.0, format="%.1f")
        st.caption(f"Values in this frame: {lo:.6g} to {hi:.6g}"
                   + (" (after rescale)" if meta.get("format") == "DICOM" else ""))


def pick_run(ctx):
    """The compressed run to compare (the app's selection by default); (run or None, message or None)."""
    run = run_picker(ctx, "demo")
    if run is None:
        return None, None
    refusal = fine_tuned_refusal(run)
    if refusal:
        return None, f"{plain(refusal)}: choose a run without fine-tuning to compare it here."
    return run, None


def answer_block(res: dict, ref: dict | None) -> None:
    """The answer and the time, as text that wraps (a metric card would cut a long class name); side by
    side where the panel is wide enough, one above the other otherwise."""
    p = res["probabilities"][res["class"]]
    compare_to = "" if ref is None else f" (original model: {ref['ms']:,.0f} ms)"
    with st.container(horizontal=True, wrap=True, gap="medium"):
        st.markdown(f"<div class='demo-label'>Answer, with probability {100 * p:.0f} %</div>"
                    f"<div class='demo-answer'>{html.escape(class_label(res['class']))}</div>",
                    unsafe_allow_html=True, width=ANSWER_WIDTH)
        st.markdown(f"<div class='demo-label'>Time for this image{compare_to}</div>"
                    f"<div class='demo-time'>{res['ms']:,.0f} ms</div>", unsafe_allow_html=True, width=ANSWER_WIDTH,
                    help=f"median of {res['runs']} single-image inferences after warm-up on {res['device']} "
                         f"(fastest {res['ms_min']:,.1f} ms, slowest {res.get('ms_max', res['ms_min']):,.1f} ms); "
                         "the two models' runs are interleaved so both see the same machine load")


def results(ctx, result, run, opacity, without_run: str) -> None:
    """Both models side by side: answer, time, Grad-CAM overlay and probability bars.

    The map and the bars have fixed widths in a wrapping row: side by side where the panel is wide
    enough (a 1920-px projector), one above the other on a 1280- or 1440-px laptop, never squeezed.
    """
    o, c = result["original"], result["compressed"]
    columns = st.columns(2, gap="large")
    method = (run or {}).get("method", "hscc")
    panels = [(columns[0], "Original model", None, o, OKABE_ITO["black"], None),
              (columns[1], "Compressed model", run_name(run) if run else None, c,
               METHOD_STYLE.get(method, METHOD_STYLE["hscc"])[1], o)]
    for col, title, sub, res, colour, ref in panels:
        with col:
            # The run's name is in the Run box above (and in this heading's help): one line less to scroll.
            st.subheader(title, anchor=False, help=sub)
            if res is None:
                st.info(without_run)
                continue
            answer_block(res, ref)
            tag = "o" if ref is None else "c"
            with st.container(horizontal=True, wrap=True, gap="small"):
                cam = overlay_figure(result["input"], res.get("cam"), opacity=opacity, colorscale="Inferno",
                                     zmin=0, zmax=1, colorbar_title="evidence (Grad-CAM)", height=CAM_SIZE + 58,
                                     title="Where it looked")
                # A one-line title, the map gets the height; 48 px keeps the title off the time above it.
                cam.update_layout(margin={"t": 48})
                chart(cam, f"demo_cam_{tag}", width=CAM_SIZE)
                chart(probability_figure(res, colour, title="Class probabilities", height=CAM_SIZE),
                      f"demo_probs_{tag}", width=PROBS_WIDTH)
            if res.get("cam_empty"):
                st.caption("The map is empty: no positive evidence for this answer at the last layer "
                           "(the Heatmaps page shows earlier layers).")


def main(ctx) -> None:
    st.markdown(STYLE, unsafe_allow_html=True)
    st.warning(NOTICE, icon=":material/warning:")
    # One row, so that a slice's answers fit one 1920 x 1080 screen (a projector). A long run name is cut
    # in the Run box at 1280 and 1440 px; the sidebar's "Selected run" and the compressed model's
    # heading give it whole. (A row of its own for the box pushed the upload view past one screen.)
    top = st.columns([1.0, 2.2, 2.6, 1.0], vertical_alignment="top")
    source = top[0].radio("Slice", SOURCES, key="demo_source")
    with top[1]:
        picked = pick_test_slice(ctx) if source == SOURCES[0] else uploaded_slice()
    with top[2]:
        run, message = pick_run(ctx)
        if message:
            st.warning(message)
    # Why the original answers alone: nothing chosen, or a chosen run this page cannot rebuild (the
    # summary must not say "no run was chosen" under a box that shows one).
    without_run = ("the chosen run was fine-tuned, so it is not shown here" if message
                   else "no compressed run was chosen")
    opacity = top[3].slider("Map opacity", 0.0, 1.0, 0.45, 0.05, key="demo_opacity",
                            help="Opacity of the Grad-CAM map over the image")
    if picked is None:
        if source == SOURCES[1] and st.session_state.get("demo_upload") is None:
            st.info("Upload one MRI slice to see both models' answers.")
        return
    slice_, token, caption, label = picked
    key = run["cache_key"] if run else None
    token = (workspace_id(), token, key, without_run)
    memo = st.session_state.get(RESULT)
    if memo is not None and memo[0] == token:
        result = memo[1]
    else:
        try:
            comp = compressed_model(ctx.cache_dir, key) if run else None
            with st.spinner("Running both models..."):
                result = compare(ctx.ws, key, slice_, compressed=comp, run=run, label=label, without_run=without_run)
        except (SliceError, ValueError) as exc:
            st.error(f"Cannot compare on this slice: {plain(exc)}")
            return
        except Exception as exc:  # noqa: BLE001 - a demo shows a message, never a traceback
            st.error(f"Could not run the models on this slice ({type(exc).__name__}: {plain(exc)})")
            return
        st.session_state[RESULT] = (token, result)
    notes = getattr(slice_, "notes", [])
    # Captions escape what the file or folder named (DICOM Modality, paths); the notes are escaped here.
    st.caption(caption + (" Converted: " + plain("; ".join(notes)) + "." if notes else ""))
    if ctx.ws.is_phantom and source == SOURCES[1]:
        st.error(PHANTOM_WARNING, icon=":material/report:")
    if result["agree"] is None:
        st.info(plain(result["summary"]))
    elif result["agree"]:
        st.success(plain(result["summary"]), icon=":material/check_circle:")
    else:  # the words say it too; colour is never the only cue
        st.error(plain(result["summary"]), icon=":material/error:")
    busy = result["original"].get("others_cpu")
    if busy is not None and busy > BUSY_SHARE:  # times taken while the machine was busy: say so
        st.warning(f"Other processes used {busy:.0%} of the CPUs while these times were taken: they are "
                   "noisy, and both models were slowed. The stored run's timing (Explorer) is steadier.",
                   icon=":material/speed:")
    results(ctx, result, run, opacity, "The chosen run was fine-tuned: see the note above." if message
            else "No compressed run to compare: pick one above.")


show("demo", main)
