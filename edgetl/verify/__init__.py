"""Files on a device to a verdict: the verifier (accuracy, agreement, latency per runtime), the gates,
device results from the bundle's check, robustness to corruptions, predict."""
