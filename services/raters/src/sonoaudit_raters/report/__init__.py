"""The study report: data loading, analysis, figures and HTML/JSON/CSV rendering."""
