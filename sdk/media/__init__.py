"""Media for the SDK: WebRTC publishing and HLS playback.

The submodules need the ``media`` extra (aiortc, PyAV) except
:mod:`liveclass.sdk.media.hls`, which needs httpx only; nothing is imported
here, so ``import liveclass.sdk`` stays free of them.
"""
