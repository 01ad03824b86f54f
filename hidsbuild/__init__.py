"""Build side of hids-bytecode: turns bpf/ and kernels.yaml into validated objects and a wheel.

Never shipped: the runtime loader lives in loader/hids_bytecode and imports nothing from here.
"""
