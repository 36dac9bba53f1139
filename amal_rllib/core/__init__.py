"""Pure math shared by MAPPO and AMAL: losses, masking, value normalisation."""
