"""Offline jobs on Ray Data (``convfm recommend-batch``)."""
