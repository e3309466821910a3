"""Quantitative checks of saliency maps: insertion/deletion AUC, Trojan AUC, pointing game."""

from __future__ import annotations
