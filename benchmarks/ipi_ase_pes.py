"""i-PI PES module for ``i-pi-driver-py -m custom -P benchmarks/ipi_ase_pes.py``: serves an
mlip_md model through i-PI's own ASE driver (the baseline of benchmarks/ipi_driver.py).

    i-pi-driver-py -u -a NAME -m custom -P benchmarks/ipi_ase_pes.py -o template=init.xyz,model=m.pt[,fused=false]

``fused=false`` makes MLIPCalculator evaluate the TorchScript model (no fused descriptor kernel).
"""
from ipi.pes._ase import ASEDriver

__DRIVER_NAME__ = "mlip_md_ase"
__DRIVER_CLASS__ = "MLIPASEDriver"


class MLIPASEDriver(ASEDriver):
    def __init__(self, template, model=None, fused="auto", *args, **kwargs):
        self.model = model
        self.fused = None if fused == "auto" else str(fused).lower() in ("1", "true", "yes")
        super().__init__(template, *args, **kwargs)

    def check_parameters(self):
        super().check_parameters()
        from mlip_md import MLIPCalculator

        self.ase_calculator = MLIPCalculator(self.model, monitors=False, fused=self.fused)
