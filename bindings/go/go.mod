module recon.local/recon

go 1.19
