"""Region perturbation (MoRF/LeRF, AOPC) and hidden-unit ablation on a dataset."""
from dashboard import evalpage

evalpage.render("ablation")
