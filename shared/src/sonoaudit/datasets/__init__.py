"""Dataset readers (BUS-BRA, UDIAT Dataset B, BUSI), validation, preprocessing, patient-level
splits, the phantom generator and import into the results store."""
