"""The video field's experiments for ``papernotes reproduce``: action recognition, then online detection."""

from papernotes.core.experiments import Experiment, Method
from papernotes.video.experiments.online_detection import run_online_detection
from papernotes.video.experiments.recognition import run_video_recognition

VIDEO = "3D Model"  # the notes' category for the video methods

EXPERIMENTS = [
    Experiment(
        "video-recognition",
        "video",
        "TSN, Two-Stream, TRN, TSM, TDN, TAM (--size full: also dilated and 3-D CNNs) on the order-sensitive "
        "synthetic benchmark",
        run_video_recognition,
        (
            Method("TSN", VIDEO, "tsn.md", "confusion_tsn.png"),
            Method("Two-Stream", "Computer Vision", "two_stream.md", "video_recognition.png"),
            Method("TRN (relation)", VIDEO, "trn.md", "video_recognition.png"),
            Method("TSM", VIDEO, "tsm.md", "confusion_tsm.png"),
            Method("TDN", VIDEO, "tdn.md", "video_recognition.png"),
            Method("TAM", VIDEO, "tam.md", "video_recognition.png"),
            Method("3-D CNNs", VIDEO, "video_3d.md", "video_recognition.png"),
            Method("Dilated convolution", VIDEO, "dilated_convolution.md", "video_recognition.png"),
        ),
    ),
    Experiment(
        "online-detection",
        "video",
        "MLP, TCN, TRN, IDN and OadTR on embedded feature streams: mAP, mcAP, epoch time, streaming",
        run_online_detection,
        (
            Method("TRN (online detection)", VIDEO, "online_trn.md", "timeline.png"),
            Method("IDN", VIDEO, "idn.md", "timeline.png"),
            Method("OadTR", VIDEO, "oadtr.md", "timeline.png"),
        ),
    ),
]
