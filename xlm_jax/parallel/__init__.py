"""Device meshes and the logical-axis rules that map model axes onto them."""
