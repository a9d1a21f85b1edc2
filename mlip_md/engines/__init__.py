"""Engines that serve mlip_md models: ASE calculator, i-PI client, LAMMPS plugin helpers."""
