"""geoagent: predict where a photo was taken."""
