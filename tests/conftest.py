import warp as wp

wp.config.log_level = wp.LOG_WARNING  # Warp 1.19 logs module loads at INFO, on stdout
