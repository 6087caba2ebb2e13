"""The model card template (installed as package data of cl2cm_hf: `cl2cm_hf.hub_cards`)."""
