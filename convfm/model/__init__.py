"""The model: ConvFM from named parts, its optimizer, the fast catalog ranker, the seed model API."""
