"""What a job's process runs on: device, threads and seeds, the numeric precision, and memory by phase."""
